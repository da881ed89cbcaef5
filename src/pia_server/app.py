"""The app factory: ``create_app(settings)`` builds one complete, independent server."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import structlog
from fastapi import FastAPI
from redis.asyncio import Redis

from pia_server import __version__
from pia_server.ai import router as ai_router
from pia_server.auth import router as auth_router
from pia_server.auth.dependencies import identify
from pia_server.auth.tokens import AccessTokens
from pia_server.core import health
from pia_server.core.config import Settings
from pia_server.core.context import AppContext
from pia_server.core.database import Database
from pia_server.core.errors import ERROR_RESPONSES, install_error_handlers
from pia_server.core.metrics import Metrics
from pia_server.core.middleware import RequestMiddleware
from pia_server.core.ratelimit import build_limiter
from pia_server.core.responses import WireJSONResponse
from pia_server.core.secrets import load_or_create_secret
from pia_server.e2ee import router as e2ee_router
from pia_server.sync import router as sync_router

log = structlog.get_logger("pia_server.app")

# Each domain module exposes ``router`` and, optionally, ``async startup(ctx)`` and
# ``async shutdown(ctx)`` for its own runtime state (kept in ``ctx.domains``).
DOMAINS: tuple[ModuleType, ...] = (auth_router, sync_router, e2ee_router, ai_router)


# FastAPI's own OpenTelemetry hooks (newer releases) look the providers up on every request;
# pia-server exports its metrics for Prometheus itself (core.metrics), so they stay off.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)


def build_context(settings: Settings) -> AppContext:
    jwt_secret = settings.auth.jwt_secret
    if not jwt_secret:
        jwt_secret = load_or_create_secret(settings.server.data_dir, "jwt-secret")
        if not settings.is_sqlite:
            log.warning(
                "jwt_secret_from_data_dir",
                note="set PIA_JWT_SECRET so that every instance verifies the same tokens",
            )
    metrics = Metrics()
    ctx = AppContext(
        settings=settings,
        db=Database(settings),
        metrics=metrics,
        limiter=build_limiter(settings, metrics),
        jwt_secret=jwt_secret,
        identify=identify,
    )
    ctx.domains["access_tokens"] = AccessTokens(
        jwt_secret,
        settings.auth.access_token_ttl_seconds,
        settings.auth.access_token_leeway_seconds,
    )
    return ctx


def create_app(settings: Settings) -> FastAPI:
    ctx = build_context(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.redis.url:
            ctx.redis = Redis.from_url(
                settings.redis.url,
                socket_timeout=settings.redis.socket_timeout_seconds,
                socket_connect_timeout=settings.redis.socket_timeout_seconds,
            )
        started: list[ModuleType] = []
        try:
            for module in DOMAINS:
                hook: Any = getattr(module, "startup", None)
                if hook is not None:
                    await hook(ctx)
                started.append(module)
            yield
        finally:
            for module in reversed(started):
                hook = getattr(module, "shutdown", None)
                if hook is not None:
                    await hook(ctx)
            if ctx.redis is not None:
                await ctx.redis.aclose()
            await ctx.limiter.close()
            await ctx.db.dispose()

    app = FastAPI(
        title="pia-server",
        version=__version__,
        lifespan=lifespan,
        default_response_class=WireJSONResponse,
        responses=ERROR_RESPONSES,
        **_NO_NATIVE_TELEMETRY,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    # FastAPI matches routes in order, one by one: the routes every client calls all day
    # (sync) go first, the operations probes last.
    for module in sorted(DOMAINS, key=lambda m: m is not sync_router):
        app.include_router(module.router)
    app.include_router(health.router)
    app.add_middleware(
        RequestMiddleware,
        metrics=ctx.metrics,
        max_body_bytes=settings.server.max_body_bytes,
        max_inflated_bytes=settings.server.max_inflated_bytes,
    )
    return app
