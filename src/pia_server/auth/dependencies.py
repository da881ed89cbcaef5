"""Route dependencies that authenticate a request by its bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pia_server.auth.errors import invalid_token
from pia_server.auth.storage import UserRow, get_user
from pia_server.auth.tokens import AccessClaims, AccessTokens, TokenError
from pia_server.core.context import AppContext, get_context

_CLAIMS_KEY = "pia_access_claims"


async def _lookup_user(ctx: AppContext, user_id: str) -> UserRow | None:
    # One statement on every authenticated request: a hot read, no transaction around it.
    async with ctx.db.hot_read() as conn:
        return await get_user(conn, user_id)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    # The early chat client sends the literal credential "anonymous" when signed out.
    if not value or value == "anonymous":
        return None
    return value


def access_tokens(ctx: AppContext) -> AccessTokens:
    return ctx.domain("access_tokens", AccessTokens)


def claims_of(request: Request) -> AccessClaims | TokenError | None:
    """Verify the request's bearer token once per request (rate limits and routes share it)."""
    cached = request.scope.get(_CLAIMS_KEY)
    if cached is not None:
        return cached if isinstance(cached, AccessClaims | TokenError) else None
    token = bearer_token(request)
    result: AccessClaims | TokenError | None
    if token is None:
        result = None
    else:
        try:
            result = access_tokens(get_context(request)).verify(token)
        except TokenError as exc:
            result = exc
    request.scope[_CLAIMS_KEY] = result if result is not None else False
    return result


async def identify(request: Request) -> str | None:
    """The user id behind a valid token, for rate-limit keys (no database lookup)."""
    claims = claims_of(request)
    return claims.user_id if isinstance(claims, AccessClaims) else None


async def require_user(request: Request) -> UserRow:
    claims = claims_of(request)
    if claims is None:
        raise invalid_token("invalid_token", "A bearer access token is required.", missing=True)
    if isinstance(claims, TokenError):
        raise invalid_token(claims.code, claims.message)
    user = await _lookup_user(get_context(request), claims.user_id)
    if user is None or user.disabled:
        # A disabled user's tokens stop working at once, whatever their expiry.
        raise invalid_token("invalid_token", "The access token is not valid.")
    return user


async def optional_user(request: Request) -> UserRow | None:
    """The user when a bearer token is sent (it must then be valid), else ``None``."""
    if claims_of(request) is None:
        return None
    return await require_user(request)


CurrentUser = Annotated[UserRow, Depends(require_user)]
OptionalUser = Annotated[UserRow | None, Depends(optional_user)]
