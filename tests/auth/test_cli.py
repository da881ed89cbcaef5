"""``pia-server users ...`` and the promise that no token or password reaches a log line."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from conftest import SettingsFactory, client_for, running_app
from pia_server.auth import cli as auth_cli
from pia_server.cli import build_parser

from .conftest import FAST_ARGON2, OidcServer, Tamper, provider_settings


@pytest.fixture
def log_sink() -> Iterator[io.StringIO]:
    """Every log line, rendered exactly as the server writes it (the pia-server handler)."""
    sink = io.StringIO()
    root = logging.getLogger()
    ours = next((h for h in root.handlers if h.get_name() == "pia-server"), None)
    handler = logging.StreamHandler(sink)
    if ours is not None and ours.formatter is not None:
        handler.setFormatter(ours.formatter)
    root.addHandler(handler)
    try:
        yield sink
    finally:
        root.removeHandler(handler)


def test_users_commands(make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(auth=FAST_ARGON2)
    parser = build_parser()
    args = parser.parse_args(
        [
            "users",
            "create",
            "--email",
            "Admin@Example.com",
            "--password",
            "a long password",
            "--name",
            "Admin",
        ]
    )
    assert args.handler(settings, args) == 0
    created = capsys.readouterr().out
    assert "Admin@Example.com" in created
    # Duplicate and weak passwords fail with a message, not a traceback.
    assert args.handler(settings, args) == 1
    bad = parser.parse_args(["users", "create", "--email", "b@example.com", "--password", "short"])
    assert bad.handler(settings, bad) == 1
    assert "at least 10" in capsys.readouterr().err

    listing = parser.parse_args(["users", "list"])
    assert listing.handler(settings, listing) == 0
    out = capsys.readouterr().out
    assert "admin@example.com".lower() in out.lower()
    assert "active" in out

    link_args = parser.parse_args(["users", "reset-link", "admin@example.com"])
    assert link_args.handler(settings, link_args) == 0
    assert re.search(
        r"/auth/reset-password\.html#token=[A-Za-z0-9_-]{43}&email=", capsys.readouterr().out
    )

    disable = parser.parse_args(["users", "disable", "ADMIN@example.com"])
    assert disable.handler(settings, disable) == 0
    assert listing.handler(settings, listing) == 0
    assert "disabled" in capsys.readouterr().out
    assert auth_cli.cmd_disable(settings, argparse.Namespace(email="nobody@example.com")) == 1
    # A disabled account gets no reset link.
    assert link_args.handler(settings, link_args) == 1


async def test_no_token_or_password_in_logs(
    make_settings: SettingsFactory,
    oidc_server: OidcServer,
    tamper: Tamper,
    log_sink: io.StringIO,
) -> None:
    settings = make_settings(
        server={"public_url": "http://testserver", "log_level": "debug"},
        auth={**FAST_ARGON2, "providers": provider_settings(oidc_server, "google")},
        rate_limits={"enabled": False},
    )
    password = "very secret password"
    secrets_seen: list[str] = [password]
    async with running_app(settings) as app, client_for(app) as client:
        await client.post("/auth/register", json={"email": "log@example.com", "password": password})
        await client.post(
            "/auth/login/local", json={"email": "log@example.com", "password": "wrong one!"}
        )
        body = (
            await client.post(
                "/auth/login/local", json={"email": "log@example.com", "password": password}
            )
        ).json()
        secrets_seen += [body["accessToken"], body["refreshToken"]]
        new = (
            await client.post("/auth/refresh", json={"refreshToken": body["refreshToken"]})
        ).json()
        secrets_seen += [new["accessToken"], new["refreshToken"]]
        r = await client.get(
            "/auth/login", params={"provider": "google", "redirect_uri": "http://localhost:1/"}
        )
        async with httpx.AsyncClient() as browser:
            cb = (
                await browser.post(r.headers["location"], data={"sub": "oauth-log@example.com"})
            ).headers["location"]
        location = (await client.get(cb)).headers["location"]
        for key in ("access_token", "refresh_token"):
            secrets_seen.append(re.search(rf"{key}=([^&]+)", location).group(1))  # type: ignore[union-attr]
        secrets_seen.append(re.search(r"code=([^&]+)", cb).group(1))  # type: ignore[union-attr]
        await client.post("/auth/logout", json={"refreshToken": new["refreshToken"]})
    text = log_sink.getvalue()
    server_lines = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("logger", "")).startswith(("pia_server", "uvicorn", "authlib", "httpx2")):
            server_lines.append(line)
    assert any("login" in line for line in server_lines)  # the server's lines were captured
    joined = "\n".join(server_lines)
    for secret in secrets_seen:
        assert secret not in joined
