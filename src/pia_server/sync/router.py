"""Sync routes: push, pull, status, events, quota (thin HTTP over ``service``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from pia_server.auth.dependencies import CurrentUser
from pia_server.core.bodies import openapi_body, read_model
from pia_server.core.context import AppContext, get_context
from pia_server.core.errors import (
    JSON_MEDIA_TYPE,
)
from pia_server.core.ratelimit import rate_limit
from pia_server.core.responses import model_response
from pia_server.core.wire import TimestampError, parse_query_timestamp
from pia_server.sync.errors import invalid_since
from pia_server.sync.keys import SecretCipher
from pia_server.sync.schemas import (
    SyncEventsResponse,
    SyncPullResponse,
    SyncPushRequest,
    SyncPushResponse,
    SyncQuotaResponse,
    SyncStatusResponse,
)
from pia_server.sync.service import SyncService

router = APIRouter(prefix="/api/sync", tags=["sync"])


async def startup(ctx: AppContext) -> None:
    cipher = SecretCipher.from_settings(ctx.settings)
    ctx.domains["sync"] = SyncService(ctx.db, ctx.settings, cipher)


async def shutdown(ctx: AppContext) -> None:
    await ctx.domain("sync", SyncService).pull_marks.close()


def _service(request: Request) -> SyncService:
    return get_context(request).domain("sync", SyncService)


_JSON_BODY = openapi_body(
    SyncPushRequest,
    description="`SyncPushRequest`; any key casing; `Content-Encoding: gzip` accepted.",
)


@router.post(
    "/push",
    dependencies=[Depends(rate_limit("sync"))],
    response_model=SyncPushResponse,
    openapi_extra=_JSON_BODY,
    summary="Push client changes (one transaction)",
)
async def push(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, SyncPushRequest, empty=b"null")
    ctx = get_context(request)
    result = await _service(request).push(user.id, body, ctx.origin(request))
    return model_response(result)


@router.get(
    "/pull",
    dependencies=[Depends(rate_limit("sync"))],
    response_model=SyncPullResponse,
    responses={304: {"description": "Nothing changed since the `If-None-Match` ETag"}},
    summary="Pull changes since a timestamp or cursor",
)
async def pull(
    request: Request,
    user: CurrentUser,
    since: Annotated[str | None, Query(description="ISO-8601; unescaped `+` accepted")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size (capped at 500)")] = None,
    cursor: Annotated[str | None, Query(description="`nextCursor` of an earlier pull")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    since_ticks: int | None = None
    if since and not cursor:
        try:
            since_ticks = parse_query_timestamp(since)
        except TimestampError as exc:
            raise invalid_since(str(exc)) from None
    settings = get_context(request).settings
    if limit is not None:
        limit = min(limit, settings.sync.max_page_size)
    result = await _service(request).pull(
        user.id, since=since_ticks, limit=limit, cursor=cursor, if_none_match=if_none_match
    )
    headers = {"ETag": result.etag, "Cache-Control": "private, no-cache"}
    if result.not_modified:
        return Response(status_code=304, headers=headers)
    return Response(content=result.body, media_type=JSON_MEDIA_TYPE, headers=headers)


@router.get(
    "/status",
    dependencies=[Depends(rate_limit("global"))],
    response_model=SyncStatusResponse,
    summary="Sync status: times, counts and bytes per type, devices seen",
)
async def status(request: Request, user: CurrentUser) -> Response:
    return model_response(await _service(request).status(user.id))


@router.get(
    "/events",
    dependencies=[Depends(rate_limit("global"))],
    response_model=SyncEventsResponse,
    summary="The caller's own audit log, newest first",
)
async def events(
    request: Request,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="`nextBefore` of an earlier page")
    ] = None,
) -> Response:
    return model_response(await _service(request).events(user.id, limit, before))


@router.get(
    "/quota",
    dependencies=[Depends(rate_limit("global"))],
    response_model=SyncQuotaResponse,
    summary="Quota limits and the caller's usage",
)
async def quota(request: Request, user: CurrentUser) -> Response:
    return model_response(await _service(request).quota(user.id))
