"""Access-token verification and refresh-token rotation, reuse, caps, logout and expiry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import OctKey
from sqlalchemy import select

from conftest import SettingsFactory, UserFactory, client_for, running_app
from pia_server.auth import tokens as tokens_module
from pia_server.auth.service import AuthService
from pia_server.auth.storage import refresh_tokens
from pia_server.auth.tokens import AUDIENCE, ISSUER, AccessTokens, TokenError
from pia_server.core.audit import audit_events
from pia_server.core.wire import TICKS_PER_SECOND, now_ticks

from .conftest import FAST_ARGON2

SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery"


def service(app: FastAPI) -> AuthService:
    return app.state.ctx.domain("auth", AuthService)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_jwt(claims: dict[str, object], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode({"alg": alg}, claims, OctKey.import_key(key.encode()), algorithms=[alg])


def claims_for(user: Any, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user.id,
        "iat": now,
        "exp": now + 900,
        "jti": "x",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})


async def test_valid_token_is_accepted(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user()
    r = await me(client, make_jwt(claims_for(user)))
    assert r.status_code == 200
    assert r.json()["id"] == user.id


async def test_tampered_tokens_are_rejected(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    other = await make_user()
    good = make_jwt(claims_for(user))
    header, payload, signature = good.split(".")
    forged_payload = b64(json.dumps(claims_for(other)).encode())
    none_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    cases = {
        "wrong key": make_jwt(claims_for(user), key="another-secret-" + "y" * 40),
        "alg none": f"{none_header}.{payload}.",
        "alg none with signature": f"{none_header}.{payload}.{signature}",
        "HS512": make_jwt(claims_for(user), alg="HS512"),
        "payload swapped": f"{header}.{forged_payload}.{signature}",
        "wrong iss": make_jwt(claims_for(user, iss="someone-else")),
        "wrong aud": make_jwt(claims_for(user, aud="other-client")),
        "no aud": make_jwt(claims_for(user, aud=None)),
        "no exp": make_jwt(claims_for(user, exp=None)),
        "no sub": make_jwt(claims_for(user, sub=None)),
        "sub not a uuid": make_jwt(claims_for(user, sub="admin")),
        "garbage": "not.a.jwt",
        "truncated": good[:-5],
    }
    for name, token in cases.items():
        r = await me(client, token)
        assert r.status_code == 401, name
        assert r.json()["error"] == "invalid_token", name
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), name


async def test_expiry_has_at_most_30_seconds_leeway(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    now = int(time.time())
    assert (await me(client, make_jwt(claims_for(user, exp=now - 10)))).status_code == 200
    r = await me(client, make_jwt(claims_for(user, iat=now - 1000, exp=now - 40)))
    assert r.status_code == 401
    assert r.json()["error"] == "token_expired"
    assert "Bearer" in r.headers["WWW-Authenticate"]


async def test_unknown_user_token_is_rejected(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    import uuid

    ghost = await make_user()
    token = make_jwt(claims_for(ghost, sub=str(uuid.uuid4())))
    assert (await me(client, token)).status_code == 401


async def test_access_token_claims(client: httpx.AsyncClient) -> None:
    await client.post("/auth/register", json={"email": "t@example.com", "password": PASSWORD})
    body = (
        await client.post(
            "/auth/login/local", json={"email": "t@example.com", "password": PASSWORD}
        )
    ).json()
    header_b64, payload_b64, _ = body["accessToken"].split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    assert header["alg"] == "HS256"
    assert claims["iss"] == "pia-server"
    assert claims["aud"] == "pia-client"
    assert claims["sub"] == body["user"]["id"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"]


# --- refresh tokens ---------------------------------------------------------------------------


async def local_session(client: httpx.AsyncClient, email: str = "r@example.com") -> dict[str, str]:
    await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    r = await client.post("/auth/login/local", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200
    return dict(r.json())


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refreshToken": token})


async def test_refresh_rotates(app: FastAPI, client: httpx.AsyncClient) -> None:
    session = await local_session(client)
    r = await refresh(client, session["refreshToken"])
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"accessToken", "refreshToken", "expiresIn"}
    assert body["expiresIn"] == 900
    assert body["refreshToken"] != session["refreshToken"]
    assert (await me(client, body["accessToken"])).status_code == 200
    # Stored only as SHA-256.
    async with app.state.ctx.db.read() as conn:
        hashes = set((await conn.execute(select(refresh_tokens.c.token_hash))).scalars())
    digest = hashlib.sha256(body["refreshToken"].encode()).hexdigest()
    assert digest in hashes
    assert body["refreshToken"] not in hashes


async def test_reuse_within_grace_succeeds(app: FastAPI, client: httpx.AsyncClient) -> None:
    session = await local_session(client)
    first = await refresh(client, session["refreshToken"])
    second = await refresh(client, session["refreshToken"])  # the racing twin
    assert first.status_code == second.status_code == 200
    assert (await refresh(client, first.json()["refreshToken"])).status_code == 200
    assert (await refresh(client, second.json()["refreshToken"])).status_code == 200


async def test_concurrent_refreshes_both_succeed(client: httpx.AsyncClient) -> None:
    session = await local_session(client)
    results = await asyncio.gather(*(refresh(client, session["refreshToken"]) for _ in range(2)))
    assert [r.status_code for r in results] == [200, 200]


async def test_reuse_after_grace_revokes_the_family(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    session = await local_session(client)
    other = await local_session(client, "other-device@example.com")
    svc = service(app)
    base = now_ticks()
    svc.clock = lambda: base
    child = (await refresh(client, session["refreshToken"])).json()["refreshToken"]
    grandchild = (await refresh(client, child)).json()["refreshToken"]
    svc.clock = lambda: base + 31 * TICKS_PER_SECOND
    r = await refresh(client, session["refreshToken"])  # the stolen original, later
    assert r.status_code == 401
    assert r.json()["error"] == "refresh_token_reused"
    # The whole family is dead, including the legitimate newest token ...
    assert (await refresh(client, grandchild)).status_code == 401
    # ... but another login's tokens are not.
    assert (await refresh(client, other["refreshToken"])).status_code == 200
    async with app.state.ctx.db.read() as conn:
        events = list(
            (
                await conn.execute(
                    select(
                        audit_events.c.event, audit_events.c.user_id, audit_events.c.details
                    ).where(audit_events.c.event == "refresh_token_reuse")
                )
            ).all()
        )
    assert len(events) == 1
    assert events[0].user_id == session["user"]["id"]  # type: ignore[index]
    assert session["refreshToken"] not in events[0].details


async def test_refresh_token_expires_after_30_days(app: FastAPI, client: httpx.AsyncClient) -> None:
    session = await local_session(client)
    svc = service(app)
    svc.clock = lambda: now_ticks() + 30 * 86_400 * TICKS_PER_SECOND + TICKS_PER_SECOND
    r = await refresh(client, session["refreshToken"])
    assert r.status_code == 401
    assert r.json()["error"] == "refresh_token_expired"


async def test_ten_token_cap_evicts_the_least_recently_used(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    svc = service(app)
    base = now_ticks()
    tick = iter(range(1, 1000))
    svc.clock = lambda: base + next(tick) * TICKS_PER_SECOND * 60
    first = await local_session(client, "cap@example.com")
    tokens = [first["refreshToken"]]
    for _ in range(9):
        r = await client.post(
            "/auth/login/local", json={"email": "cap@example.com", "password": PASSWORD}
        )
        tokens.append(r.json()["refreshToken"])
    # Use the oldest: it becomes the most recently used (rotated into a fresh token).
    tokens[0] = (await refresh(client, tokens[0])).json()["refreshToken"]
    # The eleventh login evicts the least recently used, which is now tokens[1].
    r = await client.post(
        "/auth/login/local", json={"email": "cap@example.com", "password": PASSWORD}
    )
    newest = r.json()["refreshToken"]
    assert (await refresh(client, tokens[1])).status_code == 401
    for token in [tokens[0], *tokens[2:], newest]:
        assert (await refresh(client, token)).status_code == 200


async def test_logout_revokes_the_family(app: FastAPI, client: httpx.AsyncClient) -> None:
    session = await local_session(client)
    svc = service(app)
    base = now_ticks()
    svc.clock = lambda: base
    child = (await refresh(client, session["refreshToken"])).json()["refreshToken"]
    r = await client.post("/auth/logout", json={"refreshToken": session["refreshToken"]})
    assert r.status_code == 204
    assert (await refresh(client, child)).status_code == 401
    r = await client.post("/auth/logout", json={"refreshToken": "unknown-token"})
    assert r.status_code == 204


async def test_refresh_token_of_one_user_never_serves_another(
    client: httpx.AsyncClient,
) -> None:
    a = await local_session(client, "a@example.com")
    b = await local_session(client, "b@example.com")
    r = await refresh(client, a["refreshToken"])
    token = r.json()["accessToken"]
    assert (await me(client, token)).json()["id"] == a["user"]["id"]
    assert a["user"]["id"] != b["user"]["id"]


async def test_refresh_rejects_garbage(client: httpx.AsyncClient) -> None:
    for body in ({"refreshToken": "x"}, {"refreshToken": ""}):
        r = await client.post("/auth/refresh", json=body)
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_refresh_token"
    r = await client.post("/auth/refresh", json={})
    assert r.status_code == 400
    r = await client.post(
        "/auth/refresh", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400


async def test_short_ttl_from_settings(make_settings: SettingsFactory) -> None:
    settings = make_settings(auth={**FAST_ARGON2, "access_token_ttl_seconds": 120})
    async with running_app(settings) as app, client_for(app) as client:
        session = await local_session(client)
        assert session["expiresIn"] == 120


def test_a_remembered_token_still_expires_on_time(monkeypatch: Any) -> None:
    tokens = AccessTokens(SECRET, ttl_seconds=60, leeway_seconds=5)
    token = tokens.issue("6f1c2a34-8d6e-4a57-9b1e-0c2d3e4f5a6b")
    assert tokens.verify(token).user_id == "6f1c2a34-8d6e-4a57-9b1e-0c2d3e4f5a6b"
    assert tokens.verify(token).user_id == "6f1c2a34-8d6e-4a57-9b1e-0c2d3e4f5a6b"  # remembered
    later = time.time() + 60 + 6
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(TokenError) as caught:
        tokens.verify(token)
    assert caught.value.code == "token_expired"


def test_remembering_a_token_admits_no_other_string() -> None:
    tokens = AccessTokens(SECRET)
    token = tokens.issue("6f1c2a34-8d6e-4a57-9b1e-0c2d3e4f5a6b")
    tokens.verify(token)
    head, body, signature = token.split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    for forged in (f"{head}.{body}.{flipped}", f"{head}.{body}.", token + " "):
        with pytest.raises(TokenError):
            tokens.verify(forged)


def test_remembered_tokens_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(tokens_module, "_VERIFIED_CACHE_SIZE", 3)
    tokens = AccessTokens(SECRET)
    issued = [tokens.issue("6f1c2a34-8d6e-4a57-9b1e-0c2d3e4f5a6b") for _ in range(5)]
    for token in issued:
        tokens.verify(token)
    assert list(tokens._verified) == issued[2:]  # the oldest went first
