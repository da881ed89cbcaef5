"""The AI proxy's errors, all in the one error shape."""

from __future__ import annotations

import math

from pia_server.core.errors import ApiError
from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks


def not_configured(what: str) -> ApiError:
    return ApiError(
        503,
        "ai_not_configured",
        f"The AI proxy is not configured for {what} on this server.",
        headers={"Retry-After": "60"},
    )


def invalid_mode(value: str) -> ApiError:
    shown = value[:40]
    return ApiError(
        400,
        "invalid_mode",
        f"X-Pia-Mode {shown!r} is not one of Optimize, Assistant, Research.",
    )


def anonymous_not_allowed() -> ApiError:
    return ApiError(
        401,
        "authentication_required",
        "Sign in to use the AI proxy on this server.",
        headers={"WWW-Authenticate": "Bearer"},
    )


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def token_limit(resets_at_ticks: int, period: str) -> ApiError:
    seconds = max(1, math.ceil((resets_at_ticks - now_ticks()) / TICKS_PER_SECOND))
    return ApiError(
        429,
        "token_limit",
        f"The {'hourly' if period == 'hour' else 'daily'} AI token budget is used up.",
        extra={"resetsAt": format_timestamp(resets_at_ticks), "retryAfter": seconds},
        headers={"Retry-After": str(seconds)},
    )
