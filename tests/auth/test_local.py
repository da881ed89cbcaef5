"""Local accounts: register, login, lockout, password reset, /auth/me, disabled users."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from conftest import SettingsFactory, client_for, running_app
from pia_server.auth.service import AuthService
from pia_server.core.audit import audit_events
from pia_server.core.wire import TICKS_PER_SECOND, now_ticks

from .conftest import FAST_ARGON2

PASSWORD = "correct horse battery"


def service(app: FastAPI) -> AuthService:
    return app.state.ctx.domain("auth", AuthService)


async def register(client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra: str):
    return await client.post("/auth/register", json={"email": email, "password": password, **extra})


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/auth/login/local", json={"email": email, "password": password})


async def test_register_then_login_returns_the_contract(client: httpx.AsyncClient) -> None:
    r = await register(client, "Ada@Example.com", displayName="Ada")
    assert r.status_code == 201
    assert r.json() == {
        "success": True,
        "message": r.json()["message"],
        "requiresEmailVerification": False,
    }
    # Emails compare case-insensitively.
    r = await login(client, "ada@example.COM")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"accessToken", "refreshToken", "expiresIn", "user"}
    assert body["expiresIn"] == 900
    user = body["user"]
    assert user["id"] == str(uuid.UUID(user["id"]))  # lowercase hyphenated
    assert user["email"] == "Ada@Example.com"
    assert user["displayName"] == "Ada"
    assert user["provider"] == "local"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", body["refreshToken"])

    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {body['accessToken']}"})
    assert me.status_code == 200
    data = me.json()
    assert data["id"] == user["id"]
    assert data["email"] == "Ada@Example.com"
    assert data["displayName"] == "Ada"
    assert data["provider"] == "local"
    assert data["requiresBusinessProfile"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", data["createdAt"])


async def test_register_rejects_bad_input(client: httpx.AsyncClient) -> None:
    r = await register(client, "a@example.com", password="short")
    assert r.status_code == 400
    assert r.json()["error"] == "validation_failed"
    assert r.json()["errors"][0]["field"] == "password"
    r = await register(client, "not-an-email")
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "email"
    r = await client.post("/auth/register", json={"email": "x@example.com"})
    assert r.status_code == 400
    assert await register(client, "dup@example.com") is not None
    r = await register(client, "DUP@example.com")
    assert r.status_code == 409
    assert r.json()["error"] == "email_taken"


async def test_registration_can_be_switched_off(make_settings: SettingsFactory) -> None:
    settings = make_settings(auth={**FAST_ARGON2, "allow_registration": False})
    async with running_app(settings) as app, client_for(app) as client:
        r = await register(client, "a@example.com")
        assert r.status_code == 403
        assert r.json()["error"] == "registration_disabled"


async def test_wrong_email_and_wrong_password_look_the_same(client: httpx.AsyncClient) -> None:
    await register(client, "bob@example.com")
    wrong_password = await login(client, "bob@example.com", "not the password")
    wrong_email = await login(client, "nobody@example.com")
    assert wrong_password.status_code == wrong_email.status_code == 401
    assert wrong_password.json() == wrong_email.json()
    assert wrong_password.json()["message"]
    assert wrong_password.headers["content-type"].startswith("application/json")


async def test_wrong_email_costs_a_full_password_verification(
    make_settings: SettingsFactory,
) -> None:
    # With a real Argon2 cost, an unknown email must take as long as a wrong password.
    cost = {"argon2_time_cost": 2, "argon2_memory_kib": 32_768, "argon2_parallelism": 1}
    settings = make_settings(auth=cost, rate_limits={"enabled": False})
    async with running_app(settings) as app, client_for(app) as client:
        await register(client, "timing@example.com")

        async def timed(email: str) -> float:
            start = time.perf_counter()
            assert (await login(client, email, "wrong password!")).status_code == 401
            return time.perf_counter() - start

        # Minimum of several tries: the least disturbed by other work on the machine. Without
        # the dummy verification an unknown email would answer in a small fraction of the time.
        known = min([await timed("timing@example.com") for _ in range(4)])
        unknown = min([await timed(f"ghost{i}@example.com") for i in range(4)])
        assert unknown > 0.4 * known
        assert known > 0.4 * unknown


async def test_lockout_after_six_failures(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "carol@example.com")
    for _ in range(6):
        assert (await login(client, "carol@example.com", "wrong-password")).status_code == 401
    r = await login(client, "carol@example.com")  # even the right password
    assert r.status_code == 429
    assert r.json()["error"] == "account_locked"
    assert r.json()["message"]
    retry = int(r.headers["Retry-After"])
    assert 14 * 60 < retry <= 15 * 60
    # Another email is not affected.
    await register(client, "dave@example.com")
    assert (await login(client, "dave@example.com")).status_code == 200
    # Fifteen minutes later the lock is gone.
    svc = service(app)
    svc.clock = lambda: now_ticks() + 15 * 60 * TICKS_PER_SECOND + 1
    assert (await login(client, "carol@example.com")).status_code == 200


async def test_failures_outside_the_window_do_not_count(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "erin@example.com")
    svc = service(app)
    base = now_ticks()
    svc.clock = lambda: base
    for _ in range(5):
        await login(client, "erin@example.com", "wrong-password")
    svc.clock = lambda: base + 16 * 60 * TICKS_PER_SECOND
    for _ in range(5):
        await login(client, "erin@example.com", "wrong-password")
    assert (await login(client, "erin@example.com")).status_code == 200


async def test_unknown_emails_lock_too(client: httpx.AsyncClient) -> None:
    for _ in range(6):
        await login(client, "ghost@example.com", "whatever-password")
    assert (await login(client, "ghost@example.com")).status_code == 429


async def test_me_requires_a_valid_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/auth/me")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await client.get("/auth/me", headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"


async def test_disabled_user_is_locked_out_at_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "frank@example.com")
    body = (await login(client, "frank@example.com")).json()
    headers = {"Authorization": f"Bearer {body['accessToken']}"}
    assert (await client.get("/auth/me", headers=headers)).status_code == 200
    await service(app).set_disabled("frank@example.com")
    r = await client.get("/auth/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"
    r = await client.post("/auth/refresh", json={"refreshToken": body["refreshToken"]})
    assert r.status_code == 401
    r = await login(client, "frank@example.com")
    assert r.status_code == 403
    assert r.json()["error"] == "account_disabled"


async def test_forgot_password_never_tells(client: httpx.AsyncClient) -> None:
    await register(client, "gina@example.com")
    known = await client.post("/auth/forgot-password", json={"email": "gina@example.com"})
    unknown = await client.post("/auth/forgot-password", json={"email": "nope@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()


async def test_reset_password_flow(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "hank@example.com")
    old = (await login(client, "hank@example.com")).json()
    link = await service(app).create_reset_link("HANK@example.com")
    assert link is not None
    assert link.startswith("http://testserver/auth/reset-password.html#token=")
    token = re.search(r"token=([^&]+)", link).group(1)  # type: ignore[union-attr]
    new = "a brand new password"

    r = await client.post(
        "/auth/reset-password",
        json={"token": token, "email": "other@example.com", "newPassword": new},
    )
    assert r.status_code == 400  # the token belongs to another email
    r = await client.post(
        "/auth/reset-password",
        json={"token": token, "email": "hank@example.com", "newPassword": "short"},
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "newPassword"
    r = await client.post(
        "/auth/reset-password",
        json={"token": token, "email": "hank@example.com", "newPassword": new},
    )
    assert r.status_code == 200, r.text
    # Single use.
    r = await client.post(
        "/auth/reset-password",
        json={"token": token, "email": "hank@example.com", "newPassword": new},
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_reset_token"
    # The old password is gone, the new one works, and every refresh token was revoked.
    assert (await login(client, "hank@example.com")).status_code == 401
    assert (await login(client, "hank@example.com", new)).status_code == 200
    r = await client.post("/auth/refresh", json={"refreshToken": old["refreshToken"]})
    assert r.status_code == 401


async def test_reset_token_expires_after_30_minutes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "ivy@example.com")
    link = await service(app).create_reset_link("ivy@example.com")
    token = re.search(r"token=([^&]+)", link or "").group(1)  # type: ignore[union-attr]
    service(app).clock = lambda: now_ticks() + 31 * 60 * TICKS_PER_SECOND
    r = await client.post(
        "/auth/reset-password",
        json={"token": token, "email": "ivy@example.com", "newPassword": "another password"},
    )
    assert r.status_code == 400


async def test_audit_events_hold_no_secrets(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "jill@example.com")
    await login(client, "jill@example.com", "wrong-password")
    body = (await login(client, "jill@example.com")).json()
    await client.post("/auth/logout", json={"refreshToken": body["refreshToken"]})
    async with app.state.ctx.db.read() as conn:
        rows = (await conn.execute(select(audit_events))).mappings().all()
    events = [row["event"] for row in rows]
    assert events == ["user_created", "login_failed", "login", "logout"]
    dump = repr(rows)
    assert PASSWORD not in dump
    assert "wrong-password" not in dump
    assert body["refreshToken"] not in dump
    assert body["accessToken"] not in dump


async def test_auth_pages_are_served(client: httpx.AsyncClient) -> None:
    for page in ("register", "forgot-password", "reset-password"):
        r = await client.get(f"/auth/{page}.html")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "<form" in r.text
        assert "http" not in r.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    r = await client.get("/auth/assets/auth.js")
    assert r.status_code == 200


@pytest.mark.parametrize("path", ["/auth/login/local", "/auth/refresh", "/auth/register"])
async def test_auth_routes_are_rate_limited(make_settings: SettingsFactory, path: str) -> None:
    settings = make_settings(auth=FAST_ARGON2, rate_limits={"auth": "2/minute"})
    async with running_app(settings) as app, client_for(app) as client:
        statuses = [(await client.post(path, json={})).status_code for _ in range(3)]
        assert statuses[-1] == 429
