"""The sync domain's client-visible errors."""

from __future__ import annotations

from typing import Any

from pia_server.core.errors import ApiError


def e2ee_required() -> ApiError:
    return ApiError(
        403,
        "e2ee_required",
        "End-to-end encryption is enabled for this account: push encrypted records only.",
    )


def quota_exceeded(errors: list[dict[str, Any]]) -> ApiError:
    return ApiError(
        409,
        "quota_exceeded",
        "This push would exceed a storage quota; nothing was stored.",
        extra={"errors": errors},
    )


def invalid_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "The cursor is not one this server issued.")


def invalid_since(detail: str) -> ApiError:
    return ApiError(
        400,
        "validation_failed",
        f"`since` is not a timestamp: {detail}",
        extra={"errors": [{"field": "since", "message": detail}]},
    )
