"""Named rate-limit policies (``auth``, ``sync``, ``global``, ``ai``) on the ``limits`` package.

Storage is in-process, or Redis when configured so that several instances share one budget. If
Redis fails, the limiter logs it, counts it and serves from in-process storage for a while before
trying Redis again: a Redis outage degrades limits to per-instance, it never takes the server down.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from fastapi import Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from pia_server.core.config import RATE_LIMIT_POLICIES, RateLimitSettings, Settings
from pia_server.core.errors import ApiError
from pia_server.core.metrics import Metrics

log = structlog.get_logger("pia_server.ratelimit")

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: int = 0


class PolicyLimiter:
    """Checks one hit against a named policy, for one key (a user or a client address)."""

    def __init__(
        self,
        settings: RateLimitSettings,
        redis_url: str,
        metrics: Metrics,
        redis_retry_seconds: float = 5.0,
        key_prefix: str = "pia",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.items: dict[str, RateLimitItem] = {
            name: parse(settings.policy(name)) for name in RATE_LIMIT_POLICIES
        }
        strategy = _STRATEGIES[settings.strategy]
        self._memory = strategy(MemoryStorage())
        self._redis: RateLimiter | None = None
        self._redis_storage: Storage | None = None
        if redis_url:
            self._redis_storage = RedisStorage(
                redis_url,
                implementation="redispy",
                key_prefix=f"{key_prefix}-limits",
                wrap_exceptions=True,
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
            self._redis = strategy(self._redis_storage)
        self._redis_down_until = 0.0
        self._redis_retry = redis_retry_seconds

    @property
    def uses_redis(self) -> bool:
        return self._redis is not None

    async def hit(self, policy: str, key: str, cost: int = 1) -> Decision:
        item = self.items[policy]
        limiter = self._memory
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await self._check(self._redis, item, policy, key, cost)
            except Exception as exc:
                self._redis_down_until = time.monotonic() + self._redis_retry
                self.metrics.rate_limit_fallbacks.inc()
                log.warning(
                    "rate_limit_redis_unavailable",
                    error=type(exc).__name__,
                    fallback="in-process storage",
                    retry_in_seconds=self._redis_retry,
                )
        return await self._check(limiter, item, policy, key, cost)

    async def _check(
        self, limiter: RateLimiter, item: RateLimitItem, policy: str, key: str, cost: int
    ) -> Decision:
        if await limiter.hit(item, policy, key, cost=cost):
            return Decision(True)
        stats = await limiter.get_window_stats(item, policy, key)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(False, min(retry, item.get_expiry()))

    async def reset(self) -> None:
        await self._memory.storage.reset()
        if self._redis_storage is not None:
            await self._redis_storage.reset()

    async def close(self) -> None:
        # limits' Redis storage owns a connection pool; nothing else to release for memory.
        return None


IdentityResolver = Callable[[Request], Awaitable[str | None]]


def client_ip(request: Request, trusted_proxies: list[str]) -> str:
    """The client address; X-Forwarded-For is believed only from a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    if not trusted_proxies:
        return peer
    networks = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    if not trusted(peer):
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    # Walk from the nearest hop back; the first untrusted one is the client.
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


def rate_limit(policy: str) -> Callable[[Request], Awaitable[None]]:
    """A route dependency that charges one request to ``policy``."""
    if policy not in RATE_LIMIT_POLICIES:
        raise ValueError(f"unknown rate-limit policy {policy!r}")

    async def dependency(request: Request) -> None:
        from pia_server.core.context import get_context

        ctx = get_context(request)
        if not ctx.settings.rate_limits.enabled:
            return
        user_id = await ctx.identify(request)
        key = (
            f"user:{user_id}"
            if user_id
            else f"ip:{client_ip(request, ctx.settings.server.trusted_proxies)}"
        )
        decision = await ctx.limiter.hit(policy, key)
        if not decision.allowed:
            ctx.metrics.rate_limited.labels(policy).inc()
            raise ApiError(
                429,
                "rate_limited",
                f"Too many requests; try again in {decision.retry_after} seconds.",
                extra={"retryAfter": decision.retry_after},
                headers={"Retry-After": str(decision.retry_after)},
            )

    dependency.__name__ = f"rate_limit_{policy}"
    return dependency


def build_limiter(settings: Settings, metrics: Metrics) -> PolicyLimiter:
    return PolicyLimiter(
        settings.rate_limits,
        settings.redis.url,
        metrics,
        redis_retry_seconds=settings.redis.retry_after_seconds,
        key_prefix=settings.redis.key_prefix,
    )
