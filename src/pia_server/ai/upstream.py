"""Upstream providers: one pooled HTTP client, OpenAI shapes in and out.

Every provider is spoken to in the OpenAI Chat Completions shape: OpenAI-wire types (OpenAI,
OpenRouter, Mistral, Ollama, any compatible server) pass through; Azure OpenAI differs only in
URL and key header; Anthropic's Messages API is translated both ways, streaming and tool calls
included.

A request is retried once, and only when the connection failed or the provider answered 5xx
before any byte of an answer was relayed; a stream that already started is never retried.
Provider keys stay here: error messages from a provider are scrubbed of the key before they
are passed on, and nothing in this module logs a message body.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

log = structlog.get_logger("pia_server.ai.upstream")

OPENAI_WIRE = frozenset({"openai", "openrouter", "mistral", "ollama", "openai-compatible"})
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "mistral": "https://api.mistral.ai/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "anthropic": "https://api.anthropic.com",
}
# Types that work without a key (a local Ollama or an unauthenticated compatible server).
KEY_OPTIONAL = frozenset({"ollama", "openai-compatible"})
AZURE_DEFAULT_API_VERSION = "2024-10-21"
ANTHROPIC_VERSION = "2023-06-01"

# Keys of an OpenAI request body that are forwarded; everything else (metadata, user, n,
# logprobs...) stays here.
FORWARDED_KEYS = (
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
)

_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk|key)[-_][A-Za-z0-9_\-*.]{6,}")


@dataclass(frozen=True, slots=True)
class Target:
    """One resolved provider for one request (the key lives only in this object)."""

    name: str
    kind: str
    model: str
    base_url: str
    api_key: str = field(repr=False)
    timeout_seconds: float
    max_output_tokens: int
    deployment: str = ""
    api_version: str = ""


class UpstreamError(Exception):
    """A provider failure, classified for the status the caller sees.

    ``kind`` is ``unavailable`` (connection or 5xx), ``timeout``, ``rate_limited``,
    ``auth`` (the provider refused our key) or ``rejected`` (another 4xx).
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    known: bool = False


def scrub(message: str, target: Target) -> str:
    """A provider's message without our key (or anything shaped like one), kept short."""
    if target.api_key:
        message = message.replace(target.api_key, "[redacted]")
        if len(target.api_key) > 8:
            # Providers echo keys partially, e.g. "sk-abc***wxyz".
            message = message.replace(target.api_key[:8], "[redacted]")
            message = message.replace(target.api_key[-4:], "****")
    message = _KEY_LIKE.sub("[redacted]", message)
    return message[:500]


def _error_text(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return ""


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    prompt = data.get("prompt_tokens", data.get("input_tokens"))
    completion = data.get("completion_tokens", data.get("output_tokens"))
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return None
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
        True,
    )


# ---------------------------------------------------------------------------------------
# Anthropic translation
# ---------------------------------------------------------------------------------------

_ANTHROPIC_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _anthropic_image(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    if url.startswith("data:") and ";base64," in url:
        media, _, payload = url[5:].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": payload}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _anthropic_content(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            blocks.append(_anthropic_image(part))
    return blocks


def text_of(content: Any) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a parts list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def to_anthropic(body: dict[str, Any], target: Target, stream: bool) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        # Anthropic wants alternating roles: merge consecutive turns of the same role.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for message in body.get("messages", []):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "user":
            append("user", _anthropic_content(message.get("content")))
        elif role == "assistant":
            blocks = _anthropic_content(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except ValueError:
                    arguments = {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "input": arguments if isinstance(arguments, dict) else {},
                    }
                )
            append("assistant", blocks)
        elif role == "tool":
            append(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.get("tool_call_id", ""),
                        "content": text_of(message.get("content")),
                    }
                ],
            )
    out: dict[str, Any] = {
        "model": target.model,
        "messages": messages,
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens"),
        "stream": stream,
    }
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    for key in ("temperature", "top_p"):
        if key in body:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object"},
            }
            for t in tools
        ]
        choice = body.get("tool_choice")
        if choice == "required":
            out["tool_choice"] = {"type": "any"}
        elif choice == "none":
            out["tool_choice"] = {"type": "none"}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            out["tool_choice"] = {"type": "tool", "name": choice["function"].get("name", "")}
    return out


def from_anthropic(data: dict[str, Any]) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        if block.get("type") == "text":
            text.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        message["tool_calls"] = calls
    usage = usage_of(data.get("usage")) or Usage()
    return {
        "id": data.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _ANTHROPIC_STOP.get(str(data.get("stop_reason")), "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


class _AnthropicStreamState:
    """Turns Anthropic stream events into OpenAI ``chat.completion.chunk`` objects."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage = Usage()
        self.tool_index: dict[int, int] = {}
        self.finished = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = str(message.get("id", ""))
            self.model = str(message.get("model", ""))
            start = usage_of(message.get("usage"))
            if start is not None:
                self.usage.prompt_tokens = start.prompt_tokens
                self.usage.known = True
            return [self.chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self.tool_index)
                self.tool_index[int(event.get("index", 0))] = index
                call = {
                    "index": index,
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
                return [self.chunk({"tool_calls": [call]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self.chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tool_index.get(int(event.get("index", 0)), 0)
                call = {"index": index, "function": {"arguments": delta.get("partial_json", "")}}
                return [self.chunk({"tool_calls": [call]})]
            return []
        if kind == "message_delta":
            end = usage_of(event.get("usage"))
            if end is not None:
                self.usage.completion_tokens = end.completion_tokens
                self.usage.known = True
            reason = (event.get("delta") or {}).get("stop_reason")
            return [self.chunk({}, _ANTHROPIC_STOP.get(str(reason), "stop"))]
        if kind == "message_stop":
            self.finished = True
        return []


# ---------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------


async def _sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` pairs of a server-sent-event stream."""
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    if data:
        yield event, "\n".join(data)


class UpstreamStream:
    """An open upstream stream, yielding OpenAI chunk objects; always ``aclose()`` it."""

    def __init__(self, response: httpx.Response, target: Target) -> None:
        self._response = response
        self._target = target
        self.usage = Usage()
        self.completion_chars = 0

    def _count(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                self.completion_chars += len(content)
            for call in delta.get("tool_calls") or []:
                self.completion_chars += len(str((call.get("function") or {}).get("arguments", "")))

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        try:
            if self._target.kind == "anthropic":
                async for chunk in self._anthropic():
                    self._count(chunk)
                    yield chunk
            else:
                async for chunk in self._openai():
                    self._count(chunk)
                    yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamError("timeout", "The AI provider stopped answering.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                "unavailable", "The connection to the AI provider was lost."
            ) from exc

    async def _openai(self) -> AsyncIterator[dict[str, Any]]:
        async for _event, data in _sse_events(self._response):
            if data.strip() == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                raise UpstreamError("unavailable", "The AI provider reported an error mid-stream.")
            usage = usage_of(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
            yield chunk
        raise UpstreamError("unavailable", "The AI provider's stream ended early.")

    async def _anthropic(self) -> AsyncIterator[dict[str, Any]]:
        state = _AnthropicStreamState()
        async for event, data in _sse_events(self._response):
            try:
                payload = json.loads(data)
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            if event == "error" or payload.get("type") == "error":
                raise UpstreamError("unavailable", "The AI provider reported an error mid-stream.")
            for chunk in state.feed(payload):
                yield chunk
            self.usage = state.usage
            if state.finished:
                if state.usage.known:
                    usage = state.usage
                    yield {
                        "id": state.id,
                        "object": "chat.completion.chunk",
                        "created": state.created,
                        "model": state.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": usage.prompt_tokens,
                            "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                        },
                    }
                return
        raise UpstreamError("unavailable", "The AI provider's stream ended early.")

    async def aclose(self) -> None:
        await self._response.aclose()


class UpstreamClient:
    """One pooled ``httpx.AsyncClient`` shared by every provider and request."""

    def __init__(self, http: httpx.AsyncClient | None = None) -> None:
        self.http = http or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            # Provider answers are small JSON or SSE; never follow redirects with our key.
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- request building ----------------------------------------------------------------

    def _request(self, target: Target, body: dict[str, Any], stream: bool) -> httpx.Request:
        base = target.base_url.rstrip("/")
        headers = {"content-type": "application/json", "accept": "application/json"}
        if stream:
            headers["accept"] = "text/event-stream"
        params: dict[str, str] = {}
        if target.kind == "anthropic":
            url = f"{base}/v1/messages"
            headers["x-api-key"] = target.api_key
            headers["anthropic-version"] = ANTHROPIC_VERSION
            payload = to_anthropic(body, target, stream)
        else:
            payload = {k: body[k] for k in FORWARDED_KEYS if k in body}
            payload["stream"] = stream
            if stream:
                # Always ask for usage: budgets settle on it. The relay hides it when the
                # caller did not ask.
                payload["stream_options"] = {"include_usage": True}
            if target.kind == "azure-openai":
                deployment = target.deployment or target.model
                url = f"{base}/openai/deployments/{deployment}/chat/completions"
                params["api-version"] = target.api_version or AZURE_DEFAULT_API_VERSION
                headers["api-key"] = target.api_key
            else:
                url = f"{base}/chat/completions"
                payload["model"] = target.model
                if target.api_key:
                    headers["authorization"] = f"Bearer {target.api_key}"
        timeout = httpx.Timeout(target.timeout_seconds, connect=min(10.0, target.timeout_seconds))
        return self.http.build_request(
            "POST",
            url,
            params=params,
            headers=headers,
            content=json.dumps(payload, separators=(",", ":")).encode(),
            timeout=timeout,
        )

    async def _send(self, target: Target, body: dict[str, Any], stream: bool) -> httpx.Response:
        """Send with one retry on a connection error or a 5xx (nothing was relayed yet)."""
        for attempt in (1, 2):
            request = self._request(target, body, stream)
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                log.warning("ai_upstream_timeout", provider=target.name, error=type(exc).__name__)
                raise UpstreamError("timeout", "The AI provider did not answer in time.") from exc
            except httpx.TransportError as exc:
                log.warning(
                    "ai_upstream_connection_failed",
                    provider=target.name,
                    error=type(exc).__name__,
                    attempt=attempt,
                )
                if attempt == 1:
                    continue
                raise UpstreamError("unavailable", "The AI provider could not be reached.") from exc
            if response.status_code < 400:
                return response
            try:
                raw = await response.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            status = response.status_code
            log.warning(
                "ai_upstream_error_status", provider=target.name, status=status, attempt=attempt
            )
            if status >= 500:
                if attempt == 1:
                    continue
                raise UpstreamError(
                    "unavailable", f"The AI provider failed (HTTP {status}).", status=status
                )
            message = scrub(_error_text(raw), target)
            if status == 429:
                raise UpstreamError(
                    "rate_limited",
                    message or "The AI provider is rate limiting this server.",
                    status=status,
                    retry_after=response.headers.get("retry-after"),
                )
            if status in (401, 403):
                raise UpstreamError(
                    "auth", "The AI provider refused this server's credentials.", status=status
                )
            raise UpstreamError(
                "rejected",
                message or f"The AI provider rejected the request (HTTP {status}).",
                status=status,
            )
        raise AssertionError("unreachable")

    # -- public API --------------------------------------------------------------------------

    async def complete(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming completion, as an OpenAI ``chat.completion`` object."""
        response = await self._send(target, body, stream=False)
        try:
            raw = await response.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamError("timeout", "The AI provider did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                "unavailable", "The connection to the AI provider was lost."
            ) from exc
        finally:
            await response.aclose()
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise UpstreamError(
                "unavailable", "The AI provider sent an unreadable answer."
            ) from exc
        if not isinstance(data, dict):
            raise UpstreamError("unavailable", "The AI provider sent an unreadable answer.")
        if target.kind == "anthropic":
            data = from_anthropic(data)
        return data

    async def open_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        """Open a stream; failures up to here map to statuses, later ones to an SSE error."""
        response = await self._send(target, body, stream=True)
        return UpstreamStream(response, target)
