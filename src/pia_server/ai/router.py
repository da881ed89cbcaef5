"""AI proxy routes: status, templates, optimize, generate-prompt and the two chat forms."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from pia_server.ai.budget import Caller
from pia_server.ai.schemas import (
    CHAT_REQUEST_SCHEMA,
    GeneratePromptRequest,
    GeneratePromptResponse,
    OptimizeRequest,
    OptimizeResponse,
    StatusResponse,
    TemplateOut,
)
from pia_server.ai.service import (
    AiMetrics,
    AiService,
    Relay,
    parse_mode,
    upstream_api_error,
)
from pia_server.ai.templates import BUILT_IN_TEMPLATES
from pia_server.ai.upstream import UpstreamClient, UpstreamError
from pia_server.auth.dependencies import OptionalUser
from pia_server.core.bodies import openapi_body, read_json, read_model
from pia_server.core.context import AppContext, get_context
from pia_server.core.errors import (
    JSON_MEDIA_TYPE,
)
from pia_server.core.ratelimit import client_ip, rate_limit
from pia_server.core.responses import model_response

router = APIRouter(prefix="/api/ai", tags=["ai"])
DOMAIN = "ai"
_TEMPLATES = [TemplateOut.of(t) for t in BUILT_IN_TEMPLATES]


async def startup(ctx: AppContext) -> None:
    upstream = UpstreamClient()
    ctx.domains[DOMAIN] = AiService(ctx.settings, ctx.db, upstream, AiMetrics(ctx.metrics.registry))


async def shutdown(ctx: AppContext) -> None:
    service = ctx.domains.pop(DOMAIN, None)
    if isinstance(service, AiService):
        await service.upstream.aclose()


def _service(request: Request) -> AiService:
    return get_context(request).domain(DOMAIN, AiService)


def _caller(request: Request, user: Any) -> Caller:
    ctx = get_context(request)
    ip = client_ip(request, ctx.settings.server.trusted_proxies)
    return Caller(user.id if user is not None else None, ip)


class SSEResponse(StreamingResponse):
    """An event stream whose generator is always closed, so budgets settle on disconnect."""

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._generator = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._generator, "aclose", None)
            if aclose is not None:
                await aclose()


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(payload: Any) -> bytes:
    return b"data: " + _dumps(payload) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _wants_stream(request: Request, flag: bool) -> bool:
    return flag or "text/event-stream" in request.headers.get("accept", "").lower()


# -- status and templates ------------------------------------------------------------------


@router.get(
    "/status",
    dependencies=[Depends(rate_limit("global"))],
    response_model=StatusResponse,
    summary="Whether the AI proxy is available, and which provider serves each mode",
)
async def ai_status(request: Request) -> Response:
    return model_response(_service(request).status())


@router.get(
    "/templates",
    dependencies=[Depends(rate_limit("global"))],
    response_model=list[TemplateOut],
    summary="The six built-in optimize templates",
)
async def ai_templates() -> Response:
    body = b"[" + b",".join(t.model_dump_json(by_alias=True).encode() for t in _TEMPLATES) + b"]"
    return Response(body, media_type=JSON_MEDIA_TYPE)


# -- optimize and generate-prompt -------------------------------------------------------------


# With `stream: true` or `Accept: text/event-stream` these routes answer Server-Sent Events.
_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` / `Accept: text/event-stream` an SSE stream",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An OpenAI `chat.completion`, or with `stream: true` SSE chunks",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/optimize",
    dependencies=[Depends(rate_limit("ai"))],
    response_model=OptimizeResponse,
    responses=_SSE_RESPONSE,
    openapi_extra=openapi_body(OptimizeRequest),
    summary="Rewrite a text with a template (JSON, or SSE when asked for text/event-stream)",
)
async def ai_optimize(request: Request, user: OptionalUser) -> Response:
    service = _service(request)
    mode = parse_mode(request.headers.get("x-pia-mode"), "optimize")
    req = await read_model(request, OptimizeRequest, empty=b"{}")
    call = await service.prepare_optimize(_caller(request, user), mode, req)
    if not _wants_stream(request, req.stream):
        done = await service.complete(call)
        model = str(done.data.get("model") or call.target.model)
        return model_response(
            OptimizeResponse(
                optimized_text=done.text,
                result=done.text,
                input_tokens=done.usage.prompt_tokens,
                output_tokens=done.usage.completion_tokens,
                model=model,
            )
        )
    relay = await service.stream(call)
    return SSEResponse(_optimize_events(relay))


async def _optimize_events(relay: Relay) -> AsyncIterator[bytes]:
    parts: list[str] = []
    try:
        async for chunk in relay.chunks():
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if isinstance(text, str) and text:
                    parts.append(text)
                    yield _sse({"type": "delta", "text": text})
    except UpstreamError as exc:
        error = upstream_api_error(exc)
        yield b"event: error\n" + _sse(
            {"type": "error", "error": error.code, "message": error.message}
        )
        return
    full = "".join(parts)
    usage = relay.usage
    yield _sse(
        {
            "type": "done",
            "optimizedText": full,
            "result": full,
            "inputTokens": usage.prompt_tokens,
            "outputTokens": usage.completion_tokens,
            "model": relay.model,
        }
    )
    yield _DONE


@router.post(
    "/generate-prompt",
    dependencies=[Depends(rate_limit("ai"))],
    response_model=GeneratePromptResponse,
    openapi_extra=openapi_body(GeneratePromptRequest),
    summary="Write a template prompt from a description of a writing style",
)
async def ai_generate_prompt(request: Request, user: OptionalUser) -> Response:
    service = _service(request)
    mode = parse_mode(request.headers.get("x-pia-mode"), "optimize")
    req = await read_model(request, GeneratePromptRequest, empty=b"{}")
    call = service.prepare_generate_prompt(_caller(request, user), mode, req)
    done = await service.complete(call)
    return model_response(
        GeneratePromptResponse(
            prompt=done.text.strip(),
            input_tokens=done.usage.prompt_tokens,
            output_tokens=done.usage.completion_tokens,
            model=str(done.data.get("model") or call.target.model),
        )
    )


# -- chat -----------------------------------------------------------------------------------


_CHAT_OPENAPI = openapi_body(schema=CHAT_REQUEST_SCHEMA)


async def _chat(request: Request, user: Any) -> Response:
    service = _service(request)
    mode = parse_mode(request.headers.get("x-pia-mode"), "assistant")
    body = await read_json(request)
    call = service.prepare_chat(_caller(request, user), mode, body)
    if body.get("stream") is not True:
        done = await service.complete(call)
        return Response(_dumps(done.data), media_type=JSON_MEDIA_TYPE)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    relay = await service.stream(call)
    return SSEResponse(_chat_events(relay, include_usage))


async def _chat_events(relay: Relay, include_usage: bool) -> AsyncIterator[bytes]:
    try:
        async for chunk in relay.chunks():
            if not include_usage:
                # We always ask the provider for usage (budgets need it); hide it when the
                # caller did not ask, as OpenAI would.
                if not chunk.get("choices") and "usage" in chunk:
                    continue
                chunk.pop("usage", None)
            yield _sse(chunk)
    except UpstreamError as exc:
        error = upstream_api_error(exc)
        payload = {
            "error": {"message": error.message, "type": "upstream_error", "code": error.code}
        }
        yield b"event: error\n" + _sse(payload)
        return
    yield _DONE


@router.post(
    "/chat/completions",
    dependencies=[Depends(rate_limit("ai"))],
    openapi_extra=_CHAT_OPENAPI,
    responses=_CHAT_RESPONSES,
    summary="OpenAI Chat Completions (model is ignored; `Bearer anonymous` is anonymous)",
)
async def ai_chat_completions(request: Request, user: OptionalUser) -> Response:
    return await _chat(request, user)


@router.post(
    "/chat",
    dependencies=[Depends(rate_limit("ai"))],
    openapi_extra=_CHAT_OPENAPI,
    responses=_CHAT_RESPONSES,
    summary="The later client's chat: an OpenAI body without `model`, plus X-Pia-Mode",
)
async def ai_chat(request: Request, user: OptionalUser) -> Response:
    # X-Pia-Persona is accepted and not used: personas live in the client.
    return await _chat(request, user)
