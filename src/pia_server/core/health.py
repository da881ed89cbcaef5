"""Operations routes: ``/healthz`` (process up), ``/readyz`` (dependencies answer), ``/metrics``."""

from __future__ import annotations

import asyncio
import ipaddress

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from pia_server.core.context import get_context
from pia_server.core.errors import ApiError, error_response
from pia_server.core.wire import WireModel

router = APIRouter(tags=["operations"])


class HealthResponse(WireModel):
    status: str


class ReadyResponse(WireModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(request: Request) -> Response | ReadyResponse:
    ctx = get_context(request)
    timeout = ctx.settings.database.connect_timeout_seconds
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(ctx.db.ping(), timeout)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"failed: {type(exc).__name__}"
    if ctx.redis is not None:
        try:
            await asyncio.wait_for(ctx.redis.ping(), ctx.settings.redis.socket_timeout_seconds)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"failed: {type(exc).__name__}"
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        return error_response(
            503,
            "not_ready",
            f"Not ready: {', '.join(failed)} did not answer.",
            checks=checks,
        )
    return ReadyResponse(status="ok", checks=checks)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    ctx = get_context(request)
    server = ctx.settings.server
    if not server.metrics_enabled:
        raise ApiError(404, "not_found", "There is nothing at this address.")
    peer = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(peer)
        allowed = any(
            address in ipaddress.ip_network(net, strict=False) for net in server.metrics_allow
        )
    except ValueError:
        allowed = False
    if not allowed:
        raise ApiError(403, "forbidden", "Metrics are not served to this address.")
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
