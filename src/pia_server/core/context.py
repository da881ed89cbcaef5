"""The per-app context: settings, database, limiter, metrics and each domain's runtime state.

One ``AppContext`` per ``create_app`` call (kept on ``app.state.ctx``), so tests can build
several apps side by side without any module-level globals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from redis.asyncio import Redis

from pia_server.core.audit import RequestOrigin
from pia_server.core.config import Settings
from pia_server.core.database import Database
from pia_server.core.metrics import Metrics
from pia_server.core.ratelimit import PolicyLimiter, client_ip

T = TypeVar("T")


async def _anonymous(_request: Request) -> str | None:
    return None


@dataclass
class AppContext:
    settings: Settings
    db: Database
    metrics: Metrics
    limiter: PolicyLimiter
    jwt_secret: str
    redis: Redis | None = None
    # Resolves the user id of a request's bearer token (without a database hit), for rate limits.
    identify: Callable[[Request], Awaitable[str | None]] = _anonymous
    # Domain runtime objects (HTTP clients, keys, caches), keyed by domain name.
    domains: dict[str, Any] = field(default_factory=dict)

    def domain(self, name: str, kind: type[T]) -> T:
        value = self.domains[name]
        assert isinstance(value, kind)
        return value

    def origin(self, request: Request) -> RequestOrigin:
        return RequestOrigin(
            ip=client_ip(request, self.settings.server.trusted_proxies),
            user_agent=request.headers.get("user-agent"),
        )


def get_context(request: Request) -> AppContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, AppContext)
    return ctx
