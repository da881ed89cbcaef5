"""Faults: the database or Redis going away under traffic, a crash mid-push, a full disk."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx

from conftest import PG_URL, REDIS_URL, require_service
from e2e.conftest import JWT_SECRET, drop_schema, server_env
from pia_server.auth.tokens import AccessTokens
from support.server_process import ServerProcess
from support.tcp_proxy import TcpProxy


def register_and_login(base: str, email: str | None = None) -> dict[str, str]:
    email = email or f"e2e-{uuid.uuid4().hex[:8]}@example.com"
    password = "correct horse battery staple"
    created = httpx.post(f"{base}/auth/register", json={"email": email, "password": password})
    assert created.status_code in (200, 201), created.text
    login = httpx.post(f"{base}/auth/login/local", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['accessToken']}"}


def _timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(url, headers=headers, timeout=30)
    return response, time.monotonic() - started


def _wait_for(
    url: str, status: int, headers: dict[str, str] | None = None, timeout: float = 20
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    response = httpx.get(url, headers=headers, timeout=10)
    while response.status_code != status and time.monotonic() < deadline:
        time.sleep(0.2)
        response = httpx.get(url, headers=headers, timeout=10)
    return response


def test_postgresql_outage_is_a_clear_503_and_heals(tmp_path: Path) -> None:
    require_service("PostgreSQL (PIA_TEST_DATABASE_URL)", bool(PG_URL))
    schema = f"pia_fault_{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy("127.0.0.1", 5432)
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    env = server_env(
        "postgresql",
        schema,
        PIA_DATABASE_URL=url,
        PIA_DATABASE__CONNECT_TIMEOUT_SECONDS="2",
        PIA_RATE_LIMITS__ENABLED="false",
    )
    try:
        with ServerProcess(tmp_path / "data", env) as server:
            headers = register_and_login(server.url)
            assert httpx.get(f"{server.url}/auth/me", headers=headers).status_code == 200
            proxy.cut()
            for _ in range(10):
                response, elapsed = _timed_get(f"{server.url}/auth/me", headers)
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "database_unavailable"
                assert "Traceback" not in response.text
                assert elapsed < 6, "a request must not hang past the configured timeouts"
            ready, _ = _timed_get(f"{server.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("failed")
            proxy.restore()
            assert _wait_for(f"{server.url}/auth/me", 200, headers).status_code == 200
            assert _wait_for(f"{server.url}/readyz", 200).status_code == 200
            assert "Traceback" not in server.logs()
    finally:
        proxy.close()
        asyncio.run(drop_schema(schema))


def test_redis_outage_keeps_serving_and_heals(tmp_path: Path) -> None:
    require_service("Redis (PIA_TEST_REDIS_URL)", bool(REDIS_URL))
    proxy = TcpProxy("127.0.0.1", 6379)
    env = server_env(
        "sqlite",
        uuid.uuid4().hex[:8],
        PIA_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
        PIA_REDIS__RETRY_AFTER_SECONDS="1",
    )
    try:
        with ServerProcess(tmp_path / "data", env) as server:
            headers = register_and_login(server.url)
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            proxy.cut()
            for _ in range(5):
                response, elapsed = _timed_get(f"{server.url}/auth/me", headers)
                assert response.status_code == 200, response.text
                assert elapsed < 5
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"].startswith("failed")
            proxy.restore()
            assert _wait_for(f"{server.url}/readyz", 200).status_code == 200
            assert "rate_limit_redis_unavailable" in server.logs()
    finally:
        proxy.close()


def test_token_minted_elsewhere_with_the_same_secret_is_accepted(tmp_path: Path) -> None:
    # What two instances rely on: a token is verified by the shared secret alone.
    with ServerProcess(tmp_path / "data", server_env("sqlite", "x")) as server:
        headers = register_and_login(server.url)
        me = httpx.get(f"{server.url}/auth/me", headers=headers).json()
        forged_elsewhere = AccessTokens(JWT_SECRET).issue(me["id"])
        again = httpx.get(
            f"{server.url}/auth/me", headers={"Authorization": f"Bearer {forged_elsewhere}"}
        )
        assert again.status_code == 200
        assert again.json()["id"] == me["id"]
        wrong = AccessTokens("another-secret-" + "q" * 40).issue(me["id"])
        refused = httpx.get(f"{server.url}/auth/me", headers={"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 401
