"""The OpenID Connect flow against a real local provider (oidc-provider-mock), per provider."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from fastapi import FastAPI

from conftest import SettingsFactory, client_for, running_app
from pia_server.auth.oidc import OidcError, check_id_token_claims, expected_issuer
from pia_server.auth.service import AuthService
from pia_server.core.wire import TICKS_PER_SECOND, now_ticks

from .conftest import FAST_ARGON2, LOOPBACK, PUBLIC_URL, OidcServer, Tamper, provider_settings

PROVIDERS = ("google", "microsoft", "entraid")


@pytest.fixture
async def oidc_app(make_settings: SettingsFactory, oidc_server: OidcServer, tamper: Tamper):
    settings = make_settings(
        server={"public_url": PUBLIC_URL},
        auth={**FAST_ARGON2, "providers": provider_settings(oidc_server, *PROVIDERS)},
        rate_limits={"enabled": False},
    )
    async with running_app(settings) as app:
        yield app


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def replace_param(url: str, **params: str) -> str:
    parts = urlsplit(url)
    q = query(url)
    q.update(params)
    return urlunsplit(parts._replace(query=urlencode(q)))


async def start(client: httpx.AsyncClient, provider: str, redirect_uri: str = LOOPBACK) -> str:
    r = await client.get("/auth/login", params={"provider": provider, "redirect_uri": redirect_uri})
    assert r.status_code == 302, r.text
    return r.headers["location"]


async def authorize(authorize_url: str, sub: str | None = None, deny: bool = False) -> str:
    """What the user does at the provider: approve as ``sub`` (or deny). Returns the callback."""
    async with httpx.AsyncClient() as browser:
        data = {"action": "deny"} if deny else {"sub": sub or "someone"}
        r = await browser.post(authorize_url, data=data)
    assert r.status_code == 302, r.text
    return r.headers["location"]


async def login_flow(
    client: httpx.AsyncClient, provider: str, sub: str, redirect_uri: str = LOOPBACK
) -> httpx.Response:
    callback = await authorize(await start(client, provider, redirect_uri), sub)
    return await client.get(callback)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_happy_path(oidc_app: FastAPI, oidc_server: OidcServer, provider: str) -> None:
    sub = f"{provider}-{uuid.uuid4().hex[:8]}"
    email = f"{sub}@example.com"
    oidc_server.set_user(sub, email=email, email_verified=True, name="Ada Lovelace")
    async with client_for(oidc_app) as client:
        authorize_url = await start(client, provider)
        params = query(authorize_url)
        assert authorize_url.startswith(oidc_server.issuer)
        assert params["client_id"] == f"pia-{provider}"
        assert params["code_challenge_method"] == "S256"
        assert params["redirect_uri"] == f"{PUBLIC_URL}/auth/callback"
        assert params["state"]
        assert params["nonce"]
        assert params["code_challenge"]
        r = await client.get(await authorize(authorize_url, sub))
        assert r.status_code == 302
        location = r.headers["location"]
        assert location.startswith(LOOPBACK + "?")
        back = query(location)
        assert set(back) == {
            "access_token",
            "refresh_token",
            "expires_in",
            "user_id",
            "email",
            "display_name",
        }
        assert back["user_id"] == str(uuid.UUID(back["user_id"]))
        assert back["email"] == email
        assert back["display_name"] == "Ada Lovelace"
        assert back["expires_in"] == "900"
        assert "+" not in location.split("?", 1)[1]  # a space is %20, never '+'
        me = await client.get(
            "/auth/me", headers={"Authorization": f"Bearer {back['access_token']}"}
        )
        assert me.json()["id"] == back["user_id"]
        assert me.json()["provider"] == provider
        r = await client.post("/auth/refresh", json={"refreshToken": back["refresh_token"]})
        assert r.status_code == 200
        # Signing in again finds the same user by identity.
        again = query((await login_flow(client, provider, sub)).headers["location"])
        assert again["user_id"] == back["user_id"]


async def test_verified_email_links_to_the_local_account(
    oidc_app: FastAPI, oidc_server: OidcServer
) -> None:
    async with client_for(oidc_app) as client:
        email = f"link-{uuid.uuid4().hex[:6]}@Example.com"
        await client.post("/auth/register", json={"email": email, "password": "local password 1"})
        local = (
            await client.post(
                "/auth/login/local", json={"email": email, "password": "local password 1"}
            )
        ).json()
        sub = f"g-{uuid.uuid4().hex[:8]}"
        oidc_server.set_user(sub, email=email.lower(), email_verified=True, name="Linked")
        back = query((await login_flow(client, "google", sub)).headers["location"])
        # The same string as local login's user.id: the client puts it into E2EE AAD.
        assert back["user_id"] == local["user"]["id"]


async def test_unverified_email_never_takes_over_an_account(
    oidc_app: FastAPI, oidc_server: OidcServer
) -> None:
    async with client_for(oidc_app) as client:
        email = f"victim-{uuid.uuid4().hex[:6]}@example.com"
        await client.post("/auth/register", json={"email": email, "password": "local password 1"})
        sub = f"m-{uuid.uuid4().hex[:8]}"
        oidc_server.set_user(sub, email=email, email_verified=False)
        back = query((await login_flow(client, "microsoft", sub)).headers["location"])
        assert back["error"] == "account_exists"
        assert "access_token" not in back


async def test_denied_consent(oidc_app: FastAPI) -> None:
    async with client_for(oidc_app) as client:
        callback = await authorize(await start(client, "google"), deny=True)
        r = await client.get(callback)
        assert r.status_code == 302
        back = query(r.headers["location"])
        assert r.headers["location"].startswith(LOOPBACK)
        assert back["error"] == "access_denied"
        assert back["message"]


async def test_tampered_state_shows_an_error_page(oidc_app: FastAPI) -> None:
    async with client_for(oidc_app) as client:
        callback = await authorize(await start(client, "google"), "tamper@example.com")
        r = await client.get(replace_param(callback, state="forged-state-value"))
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("text/html")
        assert "location" not in r.headers
        r = await client.get("/auth/callback?code=abc")
        assert r.status_code == 400


async def test_replayed_state_is_refused(oidc_app: FastAPI) -> None:
    async with client_for(oidc_app) as client:
        callback = await authorize(await start(client, "entraid"), "replay@example.com")
        assert "access_token" in query((await client.get(callback)).headers["location"])
        r = await client.get(callback)
        assert r.status_code == 400
        assert "location" not in r.headers


async def test_expired_state(oidc_app: FastAPI) -> None:
    service = oidc_app.state.ctx.domain("auth", AuthService)
    async with client_for(oidc_app) as client:
        callback = await authorize(await start(client, "google"), "slow@example.com")
        service.clock = lambda: now_ticks() + 11 * 60 * TICKS_PER_SECOND
        back = query((await client.get(callback)).headers["location"])
        assert back["error"] == "login_expired"


async def test_state_is_bound_to_the_browser(oidc_app: FastAPI) -> None:
    async with client_for(oidc_app) as victim, client_for(oidc_app) as attacker:
        callback = await authorize(await start(attacker, "google"), "attacker@example.com")
        back = query((await victim.get(callback)).headers["location"])
        assert back["error"] == "invalid_state"


async def test_another_instance_finishes_the_login(
    make_settings: SettingsFactory, oidc_server: OidcServer, tamper: Tamper
) -> None:
    # State lives in the database: an instance that did not start the login can finish it.
    settings = make_settings(
        server={"public_url": PUBLIC_URL},
        auth={**FAST_ARGON2, "providers": provider_settings(oidc_server, "google")},
    )
    async with running_app(settings) as one, running_app(settings) as two:
        async with client_for(one) as first:
            callback = await authorize(await start(first, "google"), "multi@example.com")
            cookies = first.cookies
        async with client_for(two, cookies=cookies) as second:
            back = query((await second.get(callback)).headers["location"])
            assert "access_token" in back


async def test_wrong_nonce(oidc_app: FastAPI) -> None:
    async with client_for(oidc_app) as client:
        authorize_url = replace_param(await start(client, "microsoft"), nonce="attacker-nonce")
        back = query(
            (await client.get(await authorize(authorize_url, "nonce@example.com"))).headers[
                "location"
            ]
        )
        assert back["error"] == "invalid_id_token"
        assert "nonce" in back["message"]


async def test_wrong_audience(oidc_app: FastAPI, tamper: Tamper) -> None:
    async with client_for(oidc_app) as client:
        # The provider issues the ID token for another application.
        authorize_url = replace_param(await start(client, "google"), client_id="another-app")
        callback = await authorize(authorize_url, "aud@example.com")
        tamper.token_client_id = "another-app"
        back = query((await client.get(callback)).headers["location"])
        assert back["error"] == "invalid_id_token"
        assert "another application" in back["message"]


async def test_unconfigured_provider(
    make_settings: SettingsFactory, oidc_server: OidcServer
) -> None:
    settings = make_settings(
        auth={**FAST_ARGON2, "providers": provider_settings(oidc_server, "google")}
    )
    async with running_app(settings) as app, client_for(app) as client:
        r = await client.get(
            "/auth/login", params={"provider": "entraid", "redirect_uri": LOOPBACK}
        )
        assert r.status_code == 400
        assert r.json()["error"] == "provider_not_configured"
        r = await client.get("/auth/login", params={"provider": "github", "redirect_uri": LOOPBACK})
        assert r.status_code == 400


async def test_unreachable_provider_redirects_with_an_error(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        auth={
            **FAST_ARGON2,
            "providers": {"google": {"client_id": "x", "issuer": "http://127.0.0.1:9"}},
        }
    )
    async with running_app(settings) as app, client_for(app) as client:
        r = await client.get("/auth/login", params={"provider": "google", "redirect_uri": LOOPBACK})
        assert r.status_code == 302
        assert query(r.headers["location"])["error"] == "provider_unavailable"


def test_microsoft_checks_iss_against_tid() -> None:
    template = "https://login.microsoftonline.com/{tenantid}/v2.0"
    tid = "9188040d-6c67-4c5b-b112-36a304b66dad"
    base = {
        "iss": f"https://login.microsoftonline.com/{tid}/v2.0",
        "tid": tid,
        "aud": "app",
        "sub": "s",
        "nonce": "n",
        "exp": 2_000_000_000,
        "iat": 1_900_000_000,
    }
    args = {"provider": "microsoft", "metadata_issuer": template, "client_id": "app", "nonce": "n"}
    check_id_token_claims(base, now=1_900_000_100, **args)  # type: ignore[arg-type]
    forged = {**base, "tid": "00000000-0000-0000-0000-000000000001"}
    with pytest.raises(OidcError):
        check_id_token_claims(forged, now=1_900_000_100, **args)  # type: ignore[arg-type]
    with pytest.raises(OidcError):
        check_id_token_claims({**base, "tid": None}, now=1_900_000_100, **args)  # type: ignore[arg-type]
    # A template issuer is only acceptable for the multi-tenant provider.
    with pytest.raises(OidcError):
        expected_issuer("entraid", template, base)
    with pytest.raises(OidcError):
        check_id_token_claims(base, now=2_000_001_000, **args)  # type: ignore[arg-type]
