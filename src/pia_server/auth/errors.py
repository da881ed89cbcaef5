"""Auth errors, in the shared error shape."""

from __future__ import annotations

from pia_server.core.errors import ApiError


def invalid_token(code: str, message: str, *, missing: bool = False) -> ApiError:
    """401 ``invalid_token`` or ``token_expired`` with the RFC 6750 challenge header."""
    header = "Bearer" if missing else f'Bearer error="invalid_token", error_description="{code}"'
    return ApiError(401, code, message, headers={"WWW-Authenticate": header})
