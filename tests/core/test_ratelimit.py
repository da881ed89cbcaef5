"""Rate limits: refusals on memory and on Redis, a budget shared by two instances, Redis outages."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from conftest import client_for, create_test_user, running_app
from pia_server.core.config import Settings, load_settings
from pia_server.core.ratelimit import rate_limit


def _settings(tmp_path: Path, redis: str = "", prefix: str = "", **limits: Any) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "server": {"data_dir": str(tmp_path)},
            "auth": {"jwt_secret": "s" * 40},
            "redis": {
                "url": redis,
                "key_prefix": prefix or f"pia_rl_{uuid.uuid4().hex}",
                "retry_after_seconds": 60,
            },
            "rate_limits": limits,
        },
    )


def _add_limited_route(app: FastAPI) -> None:
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_api_route(
        "/test/limited", ping, methods=["GET"], dependencies=[Depends(rate_limit("sync"))]
    )


async def _hammer(client: httpx.AsyncClient, n: int, **kwargs: Any) -> list[httpx.Response]:
    return [await client.get("/test/limited", **kwargs) for _ in range(n)]


async def _admitted_and_refused(settings: Settings, n: int) -> list[httpx.Response]:
    async with running_app(settings) as app:
        _add_limited_route(app)
        async with client_for(app) as client:
            return await _hammer(client, n)


async def test_memory_limit_refuses_with_retry_after(tmp_path: Path) -> None:
    responses = await _admitted_and_refused(_settings(tmp_path, sync="3/minute"), 5)
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    refused = responses[3]
    body = refused.json()
    assert body["error"] == "rate_limited"
    assert 1 <= body["retryAfter"] <= 60
    assert refused.headers["retry-after"] == str(body["retryAfter"])


async def test_redis_limit_refuses(tmp_path: Path, redis_url: str) -> None:
    responses = await _admitted_and_refused(_settings(tmp_path, redis_url, sync="2/minute"), 4)
    assert [r.status_code for r in responses] == [200, 200, 429, 429]


async def test_two_instances_share_one_redis_budget(tmp_path: Path, redis_url: str) -> None:
    prefix = f"pia_rl_{uuid.uuid4().hex}"
    first = _settings(tmp_path / "a", redis_url, prefix, sync="10/minute")
    second = _settings(tmp_path / "b", redis_url, prefix, sync="10/minute")
    async with running_app(first) as app_a, running_app(second) as app_b:
        _add_limited_route(app_a)
        _add_limited_route(app_b)
        async with client_for(app_a) as a, client_for(app_b) as b:
            results = await asyncio.gather(*(_hammer(c, 8) for c in (a, b)))
    statuses = [r.status_code for batch in results for r in batch]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 6


async def test_users_have_separate_budgets(settings: Settings) -> None:
    limited = settings.model_copy(
        update={"rate_limits": settings.rate_limits.model_copy(update={"sync": "2/minute"})}
    )
    async with running_app(limited) as app:
        _add_limited_route(app)
        alice = await create_test_user(app)
        bob = await create_test_user(app)
        async with client_for(app) as client:
            a = await _hammer(client, 3, headers=alice.headers)
            b = await _hammer(client, 2, headers=bob.headers)
    assert [r.status_code for r in a] == [200, 200, 429]
    assert [r.status_code for r in b] == [200, 200]


async def test_redis_outage_falls_back_and_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: every Redis call fails at once.
    settings = _settings(tmp_path, "redis://127.0.0.1:1/0", sync="3/minute")
    responses = await _admitted_and_refused(settings, 5)
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert "rate_limit_redis_unavailable" in caplog.text
