"""Health, readiness and metrics."""

from __future__ import annotations

from pathlib import Path

import httpx

from conftest import client_for, running_app
from pia_server.core.config import Settings, load_settings


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}


async def test_readyz_names_the_failing_redis(settings: Settings) -> None:
    broken = settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"url": "redis://127.0.0.1:1/0"})}
    )
    async with running_app(broken) as app, client_for(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("failed")
    assert "redis" in body["message"]


async def test_readyz_names_the_failing_database(tmp_path: Path) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "server": {"data_dir": str(tmp_path)},
            "auth": {"jwt_secret": "s" * 40},
            "database": {
                "url": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
                "connect_timeout_seconds": 1,
            },
        },
    )
    async with running_app(settings) as app, client_for(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("failed")


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    await client.get("/no/such/thing")
    text = (await client.get("/metrics")).text
    assert 'pia_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "pia_http_request_duration_seconds_bucket" in text


async def test_metrics_can_be_switched_off_and_restricted(settings: Settings) -> None:
    off = settings.model_copy(
        update={"server": settings.server.model_copy(update={"metrics_enabled": False})}
    )
    async with running_app(off) as app, client_for(app) as client:
        assert (await client.get("/metrics")).status_code == 404
    elsewhere = settings.model_copy(
        update={"server": settings.server.model_copy(update={"metrics_allow": ["10.9.9.9/32"]})}
    )
    async with running_app(elsewhere) as app, client_for(app) as client:
        response = await client.get("/metrics")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
