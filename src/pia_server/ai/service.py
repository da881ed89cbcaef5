"""The AI proxy's logic: modes and providers, prompts, budgets, usage counts. Knows no HTTP.

Each request resolves a mode to a provider, builds an OpenAI-shaped body, reserves its token
worst case, calls the provider, then settles the budget and adds one row's worth of counts to
the daily usage table. Only numbers are stored: never prompt or completion text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from pia_server.ai import storage
from pia_server.ai.budget import Budgets, Caller, Reservation, window_start
from pia_server.ai.errors import anonymous_not_allowed, bad_request, invalid_mode, not_configured
from pia_server.ai.schemas import (
    GeneratePromptRequest,
    ModeStatus,
    OptimizeRequest,
    StatusResponse,
)
from pia_server.ai.templates import BY_ID, CLARITY_AND_GRAMMAR_ID
from pia_server.ai.text import (
    GENERATE_PROMPT_SYSTEM,
    estimate_tokens,
    optimize_system_prompt,
    sanitize,
)
from pia_server.ai.upstream import (
    DEFAULT_BASE_URLS,
    FORWARDED_KEYS,
    KEY_OPTIONAL,
    Target,
    UpstreamClient,
    UpstreamError,
    UpstreamStream,
    Usage,
    text_of,
    usage_of,
)
from pia_server.core.config import Settings
from pia_server.core.database import Database
from pia_server.core.errors import ApiError
from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks
from pia_server.sync.lookup import find_user_template

log = structlog.get_logger("pia_server.ai")

MODES = ("optimize", "assistant", "research")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# A rough token charge for an image part (the real cost depends on the provider and size).
_IMAGE_TOKENS = 1000


def parse_mode(header: str | None, default: str) -> str:
    """``X-Pia-Mode`` in any case (the client sends ``Optimize``); unknown is 400."""
    if header is None or not header.strip():
        return default
    mode = header.strip().lower()
    if mode not in MODES:
        raise invalid_mode(header)
    return mode


def upstream_api_error(exc: UpstreamError) -> ApiError:
    """The status a caller sees for a provider failure."""
    if exc.kind == "timeout":
        return ApiError(504, "upstream_timeout", exc.message)
    if exc.kind == "rate_limited":
        headers: dict[str, str] = {}
        extra: dict[str, Any] = {}
        if exc.retry_after:
            headers["Retry-After"] = exc.retry_after
            if exc.retry_after.isdigit():
                seconds = int(exc.retry_after)
                extra["retryAfter"] = seconds
                extra["resetsAt"] = format_timestamp(now_ticks() + seconds * TICKS_PER_SECOND)
        return ApiError(429, "upstream_rate_limited", exc.message, extra=extra, headers=headers)
    if exc.kind == "auth":
        # A 401 from us would make the client drop its own (valid) session.
        return ApiError(502, "upstream_auth_failed", exc.message)
    if exc.kind == "rejected" and exc.status is not None:
        return ApiError(exc.status, "upstream_rejected", exc.message)
    return ApiError(502, "upstream_unavailable", exc.message)


class AiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "pia_ai_requests_total",
            "AI proxy requests by mode, provider and outcome",
            ("mode", "provider", "outcome"),
            registry=registry,
        )
        self.tokens = Counter(
            "pia_ai_tokens_total",
            "Tokens reported by AI providers",
            ("provider", "direction"),
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "pia_ai_upstream_seconds",
            "Time from sending a request to a provider to its complete answer",
            ("provider",),
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )


@dataclass(slots=True)
class Call:
    """One prepared upstream call (the body is OpenAI-shaped)."""

    caller: Caller
    target: Target
    mode: str
    body: dict[str, Any]
    reserve_tokens: int
    input_estimate: int


@dataclass(frozen=True, slots=True)
class Completion:
    data: dict[str, Any]
    text: str
    usage: Usage


class Relay:
    """A stream in progress: OpenAI chunks out, budget and usage settled when it ends."""

    def __init__(
        self,
        service: AiService,
        call: Call,
        stream: UpstreamStream,
        reservation: Reservation,
        started: float,
    ) -> None:
        self._service = service
        self._call = call
        self._stream = stream
        self._reservation = reservation
        self._started = started
        self.model = call.target.model

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        outcome = "client_closed"
        try:
            async for chunk in self._stream.chunks():
                if isinstance(chunk.get("model"), str) and chunk["model"]:
                    self.model = chunk["model"]
                yield chunk
            outcome = "ok"
        except UpstreamError as exc:
            outcome = upstream_api_error(exc).code
            raise
        finally:
            # Shielded: a client that went away cancels us, but the budget must still settle.
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
                usage = self._stream.usage
                if not usage.known:
                    usage = Usage(
                        self._call.input_estimate,
                        estimate_tokens(self._stream.completion_chars),
                        False,
                    )
                await self._service._finish(
                    self._call, self._reservation, usage, outcome, self._started
                )

    @property
    def usage(self) -> Usage:
        return self._stream.usage


class AiService:
    def __init__(
        self, settings: Settings, db: Database, upstream: UpstreamClient, metrics: AiMetrics
    ) -> None:
        self.settings = settings
        self.ai = settings.ai
        self.db = db
        self.upstream = upstream
        self.metrics = metrics
        self.budgets = Budgets(settings.ai, db)

    # -- configuration ------------------------------------------------------------------------

    def _provider_for(self, mode: str) -> tuple[str, str]:
        configured = self.ai.modes.get(mode)  # type: ignore[call-overload]
        if configured is not None:
            return configured.provider, configured.model
        return self.ai.default_provider, ""

    def target(self, mode: str) -> Target:
        name, model = self._provider_for(mode)
        provider = self.ai.providers.get(name) if name else None
        if provider is None:
            raise not_configured(f"the {mode} mode")
        base_url = provider.base_url or DEFAULT_BASE_URLS.get(provider.type, "")
        key = provider.resolved_api_key()
        model = model or provider.model or provider.deployment
        if not base_url or not model or (not key and provider.type not in KEY_OPTIONAL):
            raise not_configured(f"the {mode} mode")
        return Target(
            name=name,
            kind=provider.type,
            model=model,
            base_url=base_url,
            api_key=key,
            timeout_seconds=provider.timeout_seconds,
            max_output_tokens=provider.max_output_tokens,
            deployment=provider.deployment,
            api_version=provider.api_version,
        )

    def status(self) -> StatusResponse:
        modes: dict[str, ModeStatus] = {}
        for mode in MODES:
            try:
                target = self.target(mode)
            except ApiError:
                name, _ = self._provider_for(mode)
                modes[mode] = ModeStatus(provider=name or None, model=None, available=False)
            else:
                modes[mode] = ModeStatus(provider=target.name, model=target.model, available=True)
        return StatusResponse(
            available=any(m.available for m in modes.values()),
            allow_anonymous=self.ai.allow_anonymous,
            modes=modes,
        )

    def check_caller(self, caller: Caller) -> None:
        if caller.user_id is None and not self.ai.allow_anonymous:
            raise anonymous_not_allowed()

    # -- preparing calls ------------------------------------------------------------------

    def _clean_input(self, value: str, field: str, too_long_code: str) -> str:
        limit = self.ai.max_text_length
        if len(value) > limit:
            raise bad_request(too_long_code, f"`{field}` is longer than {limit} characters.")
        cleaned = sanitize(value)
        if not cleaned.strip():
            raise bad_request(
                "empty_text", f"`{field}` is empty after removing control characters."
            )
        return cleaned

    async def _template_prompt(self, caller: Caller, req: OptimizeRequest) -> str:
        if req.custom_prompt and req.custom_prompt.strip():
            return self._clean_input(req.custom_prompt, "customPrompt", "prompt_too_long")
        raw_id = (req.template_id or CLARITY_AND_GRAMMAR_ID).strip()
        try:
            template_id = str(uuid.UUID(raw_id))
        except ValueError:
            raise bad_request("unknown_template", "`templateId` is not a GUID.") from None
        builtin = BY_ID.get(template_id)
        if builtin is not None:
            return builtin.prompt
        if caller.user_id is not None:
            async with self.db.read() as conn:
                found = await find_user_template(conn, caller.user_id, template_id)
            if found is not None and not found.encrypted and found.prompt and found.prompt.strip():
                return sanitize(found.prompt)
            if found is not None and found.encrypted:
                raise bad_request(
                    "unknown_template",
                    "This template is end-to-end encrypted; send its text as `customPrompt`.",
                )
        raise bad_request("unknown_template", "There is no template with this `templateId`.")

    def _call(self, caller: Caller, target: Target, mode: str, system: str, user: str) -> Call:
        max_tokens = target.max_output_tokens
        body = {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "max_tokens": max_tokens,
        }
        estimate = estimate_tokens(len(system) + len(user))
        return Call(caller, target, mode, body, estimate + max_tokens, estimate)

    async def prepare_optimize(self, caller: Caller, mode: str, req: OptimizeRequest) -> Call:
        target = self.target(mode)
        self.check_caller(caller)
        text = self._clean_input(req.text, "text", "text_too_long")
        template = await self._template_prompt(caller, req)
        system = optimize_system_prompt(template, req.language, req.is_voice_input)
        return self._call(caller, target, mode, system, text)

    def prepare_generate_prompt(
        self, caller: Caller, mode: str, req: GeneratePromptRequest
    ) -> Call:
        target = self.target(mode)
        self.check_caller(caller)
        style = self._clean_input(req.style_description, "styleDescription", "text_too_long")
        return self._call(caller, target, mode, GENERATE_PROMPT_SYSTEM, style)

    def prepare_chat(self, caller: Caller, mode: str, body: Any) -> Call:
        target = self.target(mode)
        self.check_caller(caller)
        if not isinstance(body, dict):
            raise bad_request("invalid_body", "The request body must be a JSON object.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("invalid_messages", "`messages` must be a non-empty array.")
        chars = 0
        images = 0
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise bad_request(
                    "invalid_messages", f"`messages[{index}]` needs a role of {sorted(_ROLES)}."
                )
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and part.get("type") == "text":
                        chars += len(str(part.get("text", "")))
                    elif isinstance(part, dict) and part.get("type") == "image_url":
                        images += 1
                    else:
                        raise bad_request(
                            "invalid_messages",
                            f"`messages[{index}].content` has a part other than text or image_url.",
                        )
            elif content is not None:
                raise bad_request(
                    "invalid_messages", f"`messages[{index}].content` must be text or parts."
                )
            for call in message.get("tool_calls") or []:
                chars += len(json.dumps(call))
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise bad_request("unsupported_tool", "`tools` must be an array.")
            for index, tool in enumerate(tools):
                function = tool.get("function") if isinstance(tool, dict) else None
                if (
                    not isinstance(tool, dict)
                    or tool.get("type") != "function"
                    or not isinstance(function, dict)
                    or not isinstance(function.get("name"), str)
                ):
                    raise bad_request(
                        "unsupported_tool",
                        f"`tools[{index}]` is not supported: only function tools are.",
                    )
            chars += len(json.dumps(tools))
        out = {k: body[k] for k in FORWARDED_KEYS if k in body and body[k] is not None}
        if not tools:
            out.pop("tools", None)
            out.pop("tool_choice", None)
            out.pop("parallel_tool_calls", None)
        key = "max_completion_tokens" if "max_completion_tokens" in out else "max_tokens"
        requested = out.get(key)
        limit = target.max_output_tokens
        max_tokens = (
            min(requested, limit)
            if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0
            else limit
        )
        out.pop("max_tokens", None)
        out.pop("max_completion_tokens", None)
        out[key] = max_tokens
        estimate = estimate_tokens(chars) + images * _IMAGE_TOKENS
        return Call(caller, target, mode, out, estimate + max_tokens, estimate)

    # -- running calls ----------------------------------------------------------------------

    async def complete(self, call: Call) -> Completion:
        reservation = await self.budgets.reserve(call.caller, call.reserve_tokens)
        started = time.perf_counter()
        try:
            data = await self.upstream.complete(call.target, call.body)
        except UpstreamError as exc:
            await self._finish(call, reservation, Usage(), upstream_api_error(exc).code, started)
            raise upstream_api_error(exc) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._finish(call, reservation, Usage(), "client_closed", started)
            raise
        text = _completion_text(data)
        usage = usage_of(data.get("usage")) or Usage(
            call.input_estimate, estimate_tokens(len(text)), False
        )
        await self._finish(call, reservation, usage, "ok", started)
        return Completion(data, text, usage)

    async def stream(self, call: Call) -> Relay:
        reservation = await self.budgets.reserve(call.caller, call.reserve_tokens)
        started = time.perf_counter()
        try:
            upstream = await self.upstream.open_stream(call.target, call.body)
        except UpstreamError as exc:
            await self._finish(call, reservation, Usage(), upstream_api_error(exc).code, started)
            raise upstream_api_error(exc) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._finish(call, reservation, Usage(), "client_closed", started)
            raise
        return Relay(self, call, upstream, reservation, started)

    async def _finish(
        self, call: Call, reservation: Reservation, usage: Usage, outcome: str, started: float
    ) -> None:
        elapsed = time.perf_counter() - started
        used = usage.prompt_tokens + usage.completion_tokens
        provider = call.target.name
        async with self.db.write() as conn:
            await self.budgets.settle(conn, reservation, used)
            await storage.add_usage(
                conn,
                day=window_start("day", now_ticks()),
                user_id=call.caller.user_id or "",
                provider=provider[:64],
                mode=call.mode,
                outcome=outcome[:32],
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                latency_ms=int(elapsed * 1000),
            )
        self.metrics.requests.labels(call.mode, provider, outcome).inc()
        self.metrics.upstream_seconds.labels(provider).observe(elapsed)
        if usage.prompt_tokens:
            self.metrics.tokens.labels(provider, "input").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.metrics.tokens.labels(provider, "output").inc(usage.completion_tokens)


def _completion_text(data: dict[str, Any]) -> str:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message") or {}
    return text_of(message.get("content")) if isinstance(message, dict) else ""
