"""Redirect URIs: loopback per RFC 8252 and the allow-list; every other value refused."""

from __future__ import annotations

import httpx
import pytest

from conftest import SettingsFactory, client_for, running_app
from pia_server.auth.redirects import is_allowed_redirect_uri, with_query

from .conftest import FAST_ARGON2, OidcServer, provider_settings

ALLOWED = [
    "http://localhost:53682/",
    "http://localhost/",
    "http://localhost",
    "http://127.0.0.1:8000/callback",
    "http://[::1]:5000/a/b?x=1",
    "http://LOCALHOST:1/",
]
REFUSED = [
    "",
    "https://evil.com/",
    "http://evil.com/",
    "https://localhost.evil.com/",
    "http://localhost.evil.com/",
    "http://localhost@evil.com/",
    "http://user:pw@localhost/",
    "http://evil.com@localhost/",
    "http://127.0.0.1.nip.io/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://127.000.000.001/",
    "http://localhost./",
    "http://localhost:99999/",
    "http://localhost:0/",
    "http://localhost:/",
    "http://localhost\\@evil.com/",
    "http://localhost//evil.com",
    "http://localhost/#frag",
    "http://localhost/ path",
    "http://localhost/\r\nSet-Cookie:x=1",
    "javascript:alert(1)",
    "JavaScript://localhost/%0aalert(1)",
    "data:text/html,hi",
    "//localhost/",
    "localhost:8080",
    "ftp://localhost/",
    "http:/localhost/",
    "http://[::1/",
    "http://[::ffff:127.0.0.1]/",
    "http://%6cocalhost/",
    "not a url",
]


@pytest.mark.parametrize("uri", ALLOWED)
def test_loopback_is_allowed(uri: str) -> None:
    assert is_allowed_redirect_uri(uri)


@pytest.mark.parametrize("uri", REFUSED)
def test_everything_else_is_refused(uri: str) -> None:
    assert not is_allowed_redirect_uri(uri)


def test_allowlist_is_exact() -> None:
    allow = ["https://app.example.com/pia/callback"]
    assert is_allowed_redirect_uri("https://app.example.com/pia/callback", allow)
    assert not is_allowed_redirect_uri("https://app.example.com/pia/callback/", allow)
    assert not is_allowed_redirect_uri("https://app.example.com/pia/callback?x", allow)
    assert not is_allowed_redirect_uri("https://APP.example.com/pia/callback", allow)


def test_query_values_are_percent_encoded() -> None:
    url = with_query("http://localhost:1/?keep=1", {"a": "x+y z/=&", "b": "é"})
    assert url == "http://localhost:1/?keep=1&a=x%2By%20z%2F%3D%26&b=%C3%A9"


async def test_login_refuses_bad_redirects_with_a_page(
    make_settings: SettingsFactory, oidc_server: OidcServer
) -> None:
    settings = make_settings(
        auth={
            **FAST_ARGON2,
            "providers": provider_settings(oidc_server, "google"),
            "redirect_uri_allowlist": ["https://app.example.com/cb"],
        },
        rate_limits={"enabled": False},
    )
    async with running_app(settings) as app, client_for(app) as client:
        for uri in REFUSED:
            r = await client.get("/auth/login", params={"provider": "google", "redirect_uri": uri})
            assert r.status_code == 400, uri
            assert "location" not in r.headers, uri
            assert r.headers["content-type"].startswith("text/html"), uri
        r = await client.get("/auth/login", params={"provider": "google"})
        assert r.status_code == 400
        assert "location" not in r.headers
        # Two redirect_uri values: which one would we trust? Neither.
        r = await client.get(
            "/auth/login?provider=google&redirect_uri=http%3A%2F%2Flocalhost%2F"
            "&redirect_uri=https%3A%2F%2Fevil.com%2F"
        )
        assert r.status_code == 400
        assert "location" not in r.headers
        # The allow-listed URI and loopback are accepted.
        for uri in ("https://app.example.com/cb", "http://127.0.0.1:9/"):
            r = await client.get("/auth/login", params={"provider": "google", "redirect_uri": uri})
            assert r.status_code == 302, uri
            assert r.headers["location"].startswith(oidc_server.issuer)
        # A + that arrived unescaped became a space: refused, not guessed at.
        r = await client.get("/auth/login?provider=google&redirect_uri=http://localhost/a+b")
        assert isinstance(r, httpx.Response)
        assert r.status_code == 400
