"""Local fake upstream LLM servers for tests and benchmarks.

One raw ASGI app (:class:`FakeUpstream`) speaks three wire shapes on one port, routed by path:

* OpenAI Chat Completions: ``POST /v1/chat/completions`` (and ``/chat/completions``),
  ``GET /v1/models``.
* Azure OpenAI: ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``.
* Anthropic Messages: ``POST /v1/messages``.

Behaviour is driven by a mutable :class:`Scenario` (reply text, streaming chunks, usage,
errors, delays, dropped connections, tool calls) and every request is recorded so tests can
assert on what the proxy actually sent upstream.

:func:`start_fake_upstream` runs it under uvicorn in a background thread, bound to
127.0.0.1 only.  ``python -m tests.support.fake_upstreams --port N`` runs it in the
foreground for benchmarks; a small ``/_fake/*`` control API lets another process change the
scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import itertools
import json
import re
import socket
import struct
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import uvicorn
from starlette.types import Message, Receive, Scope, Send

# The fakes must never be reachable from outside the machine.
LOOPBACK_HOST = "127.0.0.1"

ApiKind = Literal["openai", "azure", "anthropic", "models", "unknown"]
ErrorShape = Literal["openai", "anthropic"]

_AZURE_PATH = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/chat/completions$")
_OPENAI_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})
_ANTHROPIC_PATH = "/v1/messages"
_CONTROL_PREFIX = "/_fake/"

# Word-sized pieces (keeping the trailing whitespace) look like real token streams.
_WORDS = re.compile(r"\S+\s*|\s+")

_JSON_CT = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


# --------------------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------------------


@dataclass
class Usage:
    """Token counts reported back (OpenAI prompt/completion, Anthropic input/output)."""

    prompt_tokens: int = 10
    completion_tokens: int = 5

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ToolCall:
    """An assistant tool call to answer with instead of text.

    ``id`` defaults to ``call_<n>`` (OpenAI) / ``toolu_<n>`` (Anthropic).  ``arguments`` may
    be a raw string to simulate malformed JSON on the OpenAI wire (Anthropic needs an object).
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None
    # Size of each streamed argument delta; small so clients must really accumulate.
    arg_chunk_size: int = 8

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)

    def arguments_object(self) -> Any:
        if isinstance(self.arguments, str):
            return json.loads(self.arguments)
        return self.arguments

    def argument_pieces(self) -> list[str]:
        text = self.arguments_json()
        size = max(1, self.arg_chunk_size)
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Scenario:
    """What the fake answers with.  Mutate it (or assign a new one) between requests.

    Order of evaluation per request: ``delay_seconds`` -> ``drop_connection`` -> API key
    check -> request validation -> ``fail_times`` -> ``status`` -> success (optionally cut
    short by ``fail_mid_stream``).
    """

    reply_text: str = "Hello from fake"
    # Streaming pieces; when set they win over reply_text (non-stream text = "".join(chunks)).
    chunks: list[str] | None = None
    usage: Usage = field(default_factory=Usage)
    # OpenAI finish_reason; mapped to Anthropic stop_reason (stop->end_turn, length->max_tokens).
    finish_reason: str = "stop"
    # One or several tool calls instead of text (finish_reason tool_calls / stop_reason tool_use).
    tool_call: ToolCall | list[ToolCall] | None = None

    # Error answer when >= 400; body in the wire's error shape unless error_body is given.
    status: int = 200
    error_body: dict[str, Any] | None = None
    error_message: str | None = None
    # Sent as Retry-After on every error answer (status, fail_times, 401...).
    retry_after: int | float | str | None = None
    # Answer fail_status to the first N chat/messages requests, then succeed.
    fail_times: int = 0
    fail_status: int = 500

    # Sleep before answering; ends early (and is recorded) if the client disconnects.
    delay_seconds: float = 0.0
    # Pause between streamed events, e.g. to test idle-read timeouts or client aborts.
    chunk_delay_seconds: float = 0.0
    # Close the socket after reading the request, without any response bytes.
    drop_connection: bool = False
    # Send about half of the response (SSE events, or bytes when not streaming), then drop.
    fail_mid_stream: bool = False
    # Drop with TCP RST (ECONNRESET on the client) instead of a plain FIN.
    reset_on_drop: bool = False

    # Real upstreams reject requests without credentials; catches a proxy forgetting the key.
    require_api_key: bool = True
    # When set, the presented key must match exactly (else 401).
    expected_api_key: str | None = None
    # Extra headers on every answer (e.g. {"retry-after-ms": "10"} or rate-limit headers).
    response_headers: dict[str, str] = field(default_factory=dict)

    # GET /v1/models ignores the error knobs above so health checks stay independent.
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "claude-fake"])
    models_status: int = 200

    def text_chunks(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        return _WORDS.findall(self.reply_text) or [""]

    def full_text(self) -> str:
        return "".join(self.text_chunks())

    def tool_calls(self) -> list[ToolCall]:
        if self.tool_call is None:
            return []
        if isinstance(self.tool_call, ToolCall):
            return [self.tool_call]
        return list(self.tool_call)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scenario:
        """Build from the JSON accepted by ``POST /_fake/scenario`` (unknown keys rejected)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown scenario fields: {sorted(unknown)}")
        values = dict(data)
        if isinstance(values.get("usage"), dict):
            values["usage"] = Usage(**values["usage"])
        raw_tool = values.get("tool_call")
        if isinstance(raw_tool, dict):
            values["tool_call"] = ToolCall(**raw_tool)
        elif isinstance(raw_tool, list):
            values["tool_call"] = [ToolCall(**item) for item in raw_tool]
        return cls(**values)


# --------------------------------------------------------------------------------------
# Recorded requests
# --------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as received by the fake (headers lower-cased, body parsed as JSON)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    api: ApiKind
    deployment: str | None = None
    api_version: str | None = None
    received_at: float = field(default_factory=time.monotonic)
    # Set when the client went away before the answer was complete (proxy cancelled upstream).
    client_disconnected: bool = False

    @property
    def api_key(self) -> str | None:
        """The credential in whichever header this wire shape uses."""
        bearer = self.headers.get("authorization", "")
        bearer_key = bearer[7:] if bearer[:7].lower() == "bearer " else None
        if self.api == "anthropic":
            return self.headers.get("x-api-key")
        if self.api == "azure":
            return self.headers.get("api-key", bearer_key)
        if self.api == "openai":
            return bearer_key
        return bearer_key or self.headers.get("api-key") or self.headers.get("x-api-key")

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def model(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("model"), str):
            return str(self.body["model"])
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "api": self.api,
            "deployment": self.deployment,
            "api_version": self.api_version,
            "client_disconnected": self.client_disconnected,
        }


# --------------------------------------------------------------------------------------
# Wire payload builders (pure functions)
# --------------------------------------------------------------------------------------


def _dumps(payload: Any) -> bytes:
    # Compact separators match what the real services emit.
    return json.dumps(payload, separators=(",", ":")).encode()


def _sse_data(payload: Any) -> bytes:
    return b"data: " + _dumps(payload) + b"\n\n"


def _sse_event(payload: dict[str, Any]) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + _dumps(payload) + b"\n\n"


def _openai_finish_reason(scenario: Scenario) -> str:
    return "tool_calls" if scenario.tool_calls() else scenario.finish_reason


def _openai_usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _openai_tool_id(call: ToolCall, index: int) -> str:
    return call.id or f"call_{index + 1}"


def openai_completion(scenario: Scenario, model: str, completion_id: str) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    calls = scenario.tool_calls()
    message: dict[str, Any] = {"role": "assistant", "refusal": None}
    if calls:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": _openai_tool_id(call, i),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for i, call in enumerate(calls)
        ]
    else:
        message["content"] = scenario.full_text()
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _openai_finish_reason(scenario),
            }
        ],
        "usage": _openai_usage(scenario.usage),
        "system_fingerprint": None,
    }


def openai_stream_events(
    scenario: Scenario, model: str, completion_id: str, *, include_usage: bool
) -> list[bytes]:
    """SSE ``chat.completion.chunk`` lines, ending with ``data: [DONE]``."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            # With include_usage every chunk carries usage: null until the final usage chunk.
            payload["usage"] = None
        return _sse_data(payload)

    calls = scenario.tool_calls()
    events: list[bytes] = []
    if calls:
        events.append(chunk({"role": "assistant", "content": None}))
        for i, call in enumerate(calls):
            header = {
                "index": i,
                "id": _openai_tool_id(call, i),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            events.append(chunk({"tool_calls": [header]}))
            for piece in call.argument_pieces():
                events.append(
                    chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                )
    else:
        events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in scenario.text_chunks():
            events.append(chunk({"content": piece}))
    events.append(chunk({}, _openai_finish_reason(scenario)))
    if include_usage:
        events.append(
            _sse_data(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": _openai_usage(scenario.usage),
                }
            )
        )
    events.append(b"data: [DONE]\n\n")
    return events


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _anthropic_stop_reason(scenario: Scenario) -> str:
    if scenario.tool_calls():
        return "tool_use"
    return _ANTHROPIC_STOP.get(scenario.finish_reason, scenario.finish_reason)


def _anthropic_tool_id(call: ToolCall, index: int) -> str:
    return call.id or f"toolu_{index + 1}"


def _anthropic_usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def anthropic_message(scenario: Scenario, model: str, message_id: str) -> dict[str, Any]:
    """A non-streaming Messages API response."""
    calls = scenario.tool_calls()
    content: list[dict[str, Any]]
    if calls:
        content = [
            {
                "type": "tool_use",
                "id": _anthropic_tool_id(call, i),
                "name": call.name,
                "input": call.arguments_object(),
            }
            for i, call in enumerate(calls)
        ]
    else:
        content = [{"type": "text", "text": scenario.full_text()}]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _anthropic_stop_reason(scenario),
        "stop_sequence": None,
        "usage": _anthropic_usage(scenario.usage.prompt_tokens, scenario.usage.completion_tokens),
    }


def anthropic_stream_events(scenario: Scenario, model: str, message_id: str) -> list[bytes]:
    """The Messages API SSE sequence: message_start ... message_stop."""
    usage = scenario.usage
    events = [
        _sse_event(
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": _anthropic_usage(usage.prompt_tokens, 1),
                },
            }
        )
    ]
    calls = scenario.tool_calls()
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if calls:
        for i, call in enumerate(calls):
            start = {
                "type": "tool_use",
                "id": _anthropic_tool_id(call, i),
                "name": call.name,
                "input": {},
            }
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in call.argument_pieces()
            ]
            blocks.append((start, deltas))
    else:
        deltas = [{"type": "text_delta", "text": piece} for piece in scenario.text_chunks()]
        blocks.append(({"type": "text", "text": ""}, deltas))
    for index, (start, deltas) in enumerate(blocks):
        events.append(
            _sse_event({"type": "content_block_start", "index": index, "content_block": start})
        )
        if index == 0:
            # The real API interleaves a ping early in the stream; clients must ignore it.
            events.append(_sse_event({"type": "ping"}))
        for delta in deltas:
            events.append(
                _sse_event({"type": "content_block_delta", "index": index, "delta": delta})
            )
        events.append(_sse_event({"type": "content_block_stop", "index": index}))
    events.append(
        _sse_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": _anthropic_stop_reason(scenario), "stop_sequence": None},
                "usage": {"output_tokens": usage.completion_tokens},
            }
        )
    )
    events.append(_sse_event({"type": "message_stop"}))
    return events


def _openai_error_type(status: int) -> tuple[str, str | None]:
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 403:
        return "permission_error", None
    if status == 404:
        return "invalid_request_error", "not_found"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_payload(shape: ErrorShape, status: int, message: str) -> dict[str, Any]:
    """An error body in the given wire's format."""
    if shape == "anthropic":
        default = "api_error" if status >= 500 else "invalid_request_error"
        kind = _ANTHROPIC_ERROR_TYPES.get(status, default)
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind, code = _openai_error_type(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --------------------------------------------------------------------------------------
# Per-request connection helper
# --------------------------------------------------------------------------------------


class _Exchange:
    """Sends the answer and notices if the client disconnects before it is complete."""

    def __init__(self, receive: Receive, send: Send, record: RecordedRequest) -> None:
        self._receive = receive
        self._send = send
        self._record = record
        self._finished = False
        self._client_gone = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def watch(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        # The body is fully read, so the next ASGI message is http.disconnect; uvicorn also
        # emits it once our response completes, hence the _finished guard.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self._finished:
            self._record.client_disconnected = True
            self._client_gone.set()

    async def close(self) -> None:
        self._finished = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    @property
    def client_gone(self) -> bool:
        return self._client_gone.is_set()

    async def pause(self, seconds: float) -> bool:
        """Sleep; return True early if the client went away meanwhile."""
        if seconds <= 0:
            return self.client_gone
        try:
            await asyncio.wait_for(self._client_gone.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes = b"") -> None:
        self._finished = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def drop(self, *, reset: bool) -> None:
        """Abort the TCP connection under uvicorn, without completing the response.

        ASGI has no "hang up" message, so reach the transport through uvicorn's cycle object
        (``receive`` is a bound method of it).  Raising from the app instead would make
        uvicorn answer 500 or log a traceback.
        """
        self._finished = True
        cycle = getattr(self._receive, "__self__", None)
        transport = getattr(cycle, "transport", None)
        abort = getattr(transport, "abort", None)
        if transport is None or not callable(abort):
            raise RuntimeError("drop_connection needs uvicorn (cannot reach the TCP transport)")
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send RST, i.e. a genuine "connection reset by peer".
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        abort()
        # Let uvicorn's connection_lost run so it marks the cycle disconnected and stays quiet.
        for _ in range(3):
            await asyncio.sleep(0)


# --------------------------------------------------------------------------------------
# The ASGI app
# --------------------------------------------------------------------------------------


def _route(method: str, path: str) -> tuple[ApiKind, str | None, int]:
    """Return (api kind, azure deployment, status to use if the route itself is wrong)."""
    if path in _OPENAI_CHAT_PATHS:
        return "openai", None, 200 if method == "POST" else 405
    if path == _ANTHROPIC_PATH:
        return "anthropic", None, 200 if method == "POST" else 405
    if path in _MODELS_PATHS:
        return "models", None, 200 if method == "GET" else 405
    match = _AZURE_PATH.match(path)
    if match:
        return "azure", match.group("deployment"), 200 if method == "POST" else 405
    return "unknown", None, 404


def _decode_headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


class FakeUpstream:
    """ASGI app emulating OpenAI / Azure OpenAI / Anthropic, driven by a :class:`Scenario`."""

    def __init__(self, scenario: Scenario | None = None, *, record_requests: bool = True) -> None:
        self._lock = threading.Lock()
        self._scenario = scenario or Scenario()
        self._requests: list[RecordedRequest] = []
        self._failures_served = 0
        self._ids = itertools.count(1)
        # Benchmarks can turn recording off so memory stays flat over long runs.
        self.record_requests = record_requests

    # -- state shared with the test thread ------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @scenario.setter
    def scenario(self, value: Scenario) -> None:
        # A fresh scenario starts its fail_times budget from zero.
        with self._lock:
            self._scenario = value
            self._failures_served = 0

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot copy of all recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise LookupError("the fake upstream has not received any request")
            return self._requests[-1]

    @property
    def failures_served(self) -> int:
        """How many ``fail_times`` failures have been answered so far."""
        return self._failures_served

    def reset(self) -> None:
        """Back to the default scenario, no recorded requests, fail_times budget cleared."""
        with self._lock:
            self._scenario = Scenario()
            self._requests.clear()
            self._failures_served = 0

    def _record(self, record: RecordedRequest) -> None:
        if self.record_requests:
            with self._lock:
                self._requests.append(record)

    def _take_failure(self, fail_times: int) -> bool:
        with self._lock:
            if self._failures_served < fail_times:
                self._failures_served += 1
                return True
            return False

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    # -- ASGI entry point ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = str(scope["method"])
        path = str(scope["path"])
        raw_body = await _read_body(receive)
        if path.startswith(_CONTROL_PREFIX):
            await self._control(method, path, raw_body, send)
            return

        api, deployment, route_status = _route(method, path)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        body: Any = None
        body_is_json = True
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body_is_json = False
        record = RecordedRequest(
            method=method,
            path=path,
            query=query,
            headers=_decode_headers(scope),
            body=body,
            raw_body=raw_body,
            api=api,
            deployment=deployment,
            api_version=query.get("api-version"),
        )
        self._record(record)
        # Snapshot so a test mutating the scenario mid-request cannot tear this answer.
        scenario = copy.copy(self.scenario)

        exchange = _Exchange(receive, send, record)
        exchange.watch()
        try:
            if route_status != 200:
                message = "Method not allowed" if route_status == 405 else f"Unknown path {path}"
                await self._send_error(exchange, scenario, "openai", route_status, message)
            elif api == "models":
                await self._models(exchange, scenario)
            elif not body_is_json:
                shape: ErrorShape = "anthropic" if api == "anthropic" else "openai"
                await self._send_error(
                    exchange, scenario, shape, 400, "Request body is not valid JSON"
                )
            else:
                await self._chat(exchange, scenario, record)
        except asyncio.CancelledError:
            # Server shutting down mid-answer: hang up like a dying upstream would, instead
            # of letting uvicorn log a traceback or send a 500.
            await exchange.drop(reset=False)
        finally:
            await exchange.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- handlers --------------------------------------------------------------------------

    async def _models(self, exchange: _Exchange, scenario: Scenario) -> None:
        if scenario.models_status != 200:
            await self._send_error(
                exchange, scenario, "openai", scenario.models_status, "models unavailable"
            )
            return
        created = int(time.time())
        payload = {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "fake-upstream"}
                for name in scenario.models
            ],
        }
        await self._send_json(exchange, scenario, 200, payload)

    async def _chat(self, exchange: _Exchange, scenario: Scenario, record: RecordedRequest) -> None:
        shape: ErrorShape = "anthropic" if record.api == "anthropic" else "openai"
        if await exchange.pause(scenario.delay_seconds):
            return  # the client gave up waiting; nothing left to answer
        if scenario.drop_connection:
            await exchange.drop(reset=scenario.reset_on_drop)
            return

        auth_error = self._auth_error(scenario, record)
        if auth_error is not None:
            await self._send_error(exchange, scenario, shape, 401, auth_error)
            return
        invalid = self._validation_error(record)
        if invalid is not None:
            status, message = invalid
            await self._send_error(exchange, scenario, shape, status, message)
            return
        if self._take_failure(scenario.fail_times):
            await self._send_error(exchange, scenario, shape, scenario.fail_status, None)
            return
        if scenario.status >= 400:
            await self._send_error(exchange, scenario, shape, scenario.status, None)
            return

        body: dict[str, Any] = record.body
        model = record.model or record.deployment or "fake-model"
        number = self._next_id()
        if record.api == "anthropic":
            message_id = f"msg_fake{number:06d}"
            if record.stream:
                events = anthropic_stream_events(scenario, model, message_id)
                await self._stream(exchange, scenario, events, request_id=message_id)
            else:
                payload = anthropic_message(scenario, model, message_id)
                await self._send_json(exchange, scenario, 200, payload, request_id=message_id)
            return

        completion_id = f"chatcmpl-fake{number:06d}"
        if record.stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = openai_stream_events(
                scenario, model, completion_id, include_usage=include_usage
            )
            await self._stream(exchange, scenario, events, request_id=completion_id)
        else:
            payload = openai_completion(scenario, model, completion_id)
            await self._send_json(exchange, scenario, 200, payload, request_id=completion_id)

    @staticmethod
    def _auth_error(scenario: Scenario, record: RecordedRequest) -> str | None:
        key = record.api_key
        if scenario.expected_api_key is not None and key != scenario.expected_api_key:
            return "Incorrect API key provided" if key else "No API key provided"
        if scenario.require_api_key and not key:
            if record.api == "anthropic":
                return "x-api-key header is required"
            return "You didn't provide an API key."
        return None

    @staticmethod
    def _validation_error(record: RecordedRequest) -> tuple[int, str] | None:
        # Only the checks real upstreams enforce that a buggy proxy could plausibly violate.
        body = record.body
        if not isinstance(body, dict):
            return 400, "Request body must be a JSON object"
        if record.api == "azure" and not record.api_version:
            # Azure answers 404 (not 400) when api-version is missing.
            return 404, "Resource not found"
        if record.api == "anthropic" and "anthropic-version" not in record.headers:
            return 400, "anthropic-version: header is required"
        if record.api != "azure" and not isinstance(body.get("model"), str):
            return 400, "model: field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, "messages: must be a non-empty array"
        if record.api == "anthropic" and not isinstance(body.get("max_tokens"), int):
            return 400, "max_tokens: field required"
        return None

    # -- response writers ------------------------------------------------------------------

    @staticmethod
    def _headers(
        scenario: Scenario, base: list[tuple[bytes, bytes]], request_id: str | None
    ) -> list[tuple[bytes, bytes]]:
        headers = list(base)
        if request_id is not None:
            # Both names so proxies can log the upstream id whatever wire they speak.
            headers.append((b"x-request-id", request_id.encode()))
            headers.append((b"request-id", request_id.encode()))
        for name, value in scenario.response_headers.items():
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        return headers

    async def _send_json(
        self,
        exchange: _Exchange,
        scenario: Scenario,
        status: int,
        payload: Any,
        *,
        request_id: str | None = None,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        data = _dumps(payload)
        base = [_JSON_CT, (b"content-length", str(len(data)).encode()), *extra_headers]
        await exchange.start(status, self._headers(scenario, base, request_id))
        if status == 200 and scenario.fail_mid_stream:
            # Promise the full length, deliver half: the client sees a truncated body.
            await exchange.chunk(data[: len(data) // 2])
            await exchange.drop(reset=scenario.reset_on_drop)
            return
        await exchange.finish(data)

    async def _send_error(
        self,
        exchange: _Exchange,
        scenario: Scenario,
        shape: ErrorShape,
        status: int,
        message: str | None,
    ) -> None:
        if scenario.error_body is not None and message is None:
            payload: dict[str, Any] = scenario.error_body
        else:
            text = message or scenario.error_message or f"Fake upstream error (HTTP {status})"
            payload = error_payload(shape, status, text)
        extra: list[tuple[bytes, bytes]] = []
        if scenario.retry_after is not None:
            extra.append((b"retry-after", str(scenario.retry_after).encode()))
        await exchange.start(
            status,
            self._headers(
                scenario,
                [_JSON_CT, (b"content-length", str(len(_dumps(payload))).encode()), *extra],
                None,
            ),
        )
        await exchange.finish(_dumps(payload))

    async def _stream(
        self, exchange: _Exchange, scenario: Scenario, events: list[bytes], *, request_id: str
    ) -> None:
        await exchange.start(200, self._headers(scenario, list(_SSE_HEADERS), request_id))
        # Cut roughly in the middle so the client has already consumed some content.
        cut = max(1, len(events) // 2) if scenario.fail_mid_stream else len(events)
        for index, event in enumerate(events[:cut]):
            if index and await exchange.pause(scenario.chunk_delay_seconds):
                return  # client aborted the stream; recorded as client_disconnected
            await exchange.chunk(event)
        if scenario.fail_mid_stream:
            await exchange.drop(reset=scenario.reset_on_drop)
            return
        await exchange.finish()

    # -- control API for out-of-process use ------------------------------------------------

    async def _control(self, method: str, path: str, raw_body: bytes, send: Send) -> None:
        status = 200
        payload: Any
        action = path[len(_CONTROL_PREFIX) :]
        if action == "scenario" and method == "GET":
            payload = dataclasses.asdict(self.scenario)
        elif action == "scenario" and method in {"POST", "PUT"}:
            try:
                self.scenario = Scenario.from_json(json.loads(raw_body or b"{}"))
                payload = dataclasses.asdict(self.scenario)
            except (ValueError, TypeError) as exc:
                status, payload = 400, {"error": str(exc)}
        elif action == "reset" and method == "POST":
            self.reset()
            payload = {"ok": True}
        elif action == "requests" and method == "GET":
            records = self.requests
            payload = {"count": len(records), "requests": [r.to_json() for r in records]}
        else:
            status, payload = 404, {"error": f"unknown control endpoint {method} {path}"}
        data = _dumps(payload)
        headers = [_JSON_CT, (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})


# --------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------


def _bind_loopback(port: int) -> socket.socket:
    # proto=IPPROTO_TCP so that asyncio switches Nagle off on accepted connections (it checks
    # the listening socket's proto); without it small writes wait ~40 ms for delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK_HOST, port))
    sock.listen(1024)
    return sock


def _uvicorn_config(app: FakeUpstream, port: int, graceful_timeout: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=LOOPBACK_HOST,
        port=port,
        # Leave the host process's logging (pytest capture, benchmark output) untouched.
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="asyncio",
        ws="none",
        proxy_headers=False,
        server_header=False,
        # Bounded so a test leaving a slow request in flight cannot hang shutdown.
        timeout_graceful_shutdown=graceful_timeout,
    )


class RunningUpstream:
    """A :class:`FakeUpstream` served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, upstream: FakeUpstream | None = None, *, port: int = 0) -> None:
        self.upstream = upstream or FakeUpstream()
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RunningUpstream:
        if self._thread is not None:
            return self
        # Binding ourselves gives the real port before uvicorn starts and avoids races.
        sock = _bind_loopback(self._requested_port)
        self.port = int(sock.getsockname()[1])
        server = uvicorn.Server(_uvicorn_config(self.upstream, self.port, graceful_timeout=1))
        thread = threading.Thread(
            target=self._run,
            args=(server, sock),
            name=f"fake-upstream-{self.port}",
            daemon=True,  # never keep the interpreter alive, even if stop() is forgotten
        )
        self._sock, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                sock.close()
                raise RuntimeError("fake upstream server thread exited during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("fake upstream did not start in time")
            time.sleep(0.005)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        asyncio.run(serve())

    @staticmethod
    def _cancel_in_flight(server: uvicorn.Server) -> None:
        # Nothing a fake is answering is worth finishing; cancelled handlers hang up at once
        # so shutdown never waits on a long delay_seconds / chunk_delay_seconds.
        for task in list(server.server_state.tasks):
            task.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None:
            return
        if loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._cancel_in_flight, server)
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            # Skip waiting for lingering connections/tasks; asyncio.run then cancels them.
            server.force_exit = True
            thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = self._loop = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> RunningUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    # -- URLs ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (Azure endpoint / Anthropic base URL)."""
        return f"http://{LOOPBACK_HOST}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for the ``openai`` SDK, which expects the ``/v1`` suffix."""
        return f"{self.base_url}/v1"

    # -- delegation to the app state --------------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        return self.upstream.scenario

    @scenario.setter
    def scenario(self, value: Scenario) -> None:
        self.upstream.scenario = value

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.upstream.requests

    @property
    def last_request(self) -> RecordedRequest:
        return self.upstream.last_request

    def reset(self) -> None:
        self.upstream.reset()

    def wait_until(self, predicate: Callable[[FakeUpstream], bool], timeout: float = 5.0) -> bool:
        """Poll until ``predicate(upstream)`` holds (e.g. a disconnect got recorded)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.upstream):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests were recorded; return them."""
        if not self.wait_until(lambda up: len(up.requests) >= count, timeout):
            raise TimeoutError(f"expected {count} requests, got {len(self.requests)}")
        return self.requests


def start_fake_upstream(
    scenario: Scenario | None = None, *, port: int = 0, record_requests: bool = True
) -> RunningUpstream:
    """Start a fake upstream on 127.0.0.1 (free port by default) and return it running.

    Use as ``with start_fake_upstream() as up: ...`` or call ``up.stop()`` yourself.
    """
    upstream = FakeUpstream(scenario, record_requests=record_requests)
    return RunningUpstream(upstream, port=port).start()


def main(argv: Sequence[str] | None = None) -> None:
    """Run in the foreground (Ctrl+C to stop) for benchmarks."""
    parser = argparse.ArgumentParser(description="Fake OpenAI/Azure/Anthropic upstream")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any)")
    parser.add_argument("--reply-text", default=Scenario.reply_text)
    parser.add_argument(
        "--stream-chunks", type=int, default=0, help="if > 0, stream this many word chunks"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between events")
    parser.add_argument(
        "--no-record", action="store_true", help="do not keep requests (flat memory)"
    )
    args = parser.parse_args(argv)

    scenario = Scenario(
        reply_text=args.reply_text,
        chunks=[f"w{i} " for i in range(args.stream_chunks)] if args.stream_chunks > 0 else None,
        delay_seconds=args.delay,
        chunk_delay_seconds=args.chunk_delay,
    )
    app = FakeUpstream(scenario, record_requests=not args.no_record)
    sock = _bind_loopback(args.port)
    port = int(sock.getsockname()[1])
    print(f"fake upstream listening on http://{LOOPBACK_HOST}:{port}", flush=True)
    server = uvicorn.Server(_uvicorn_config(app, port, graceful_timeout=1))
    # uvicorn re-raises the captured Ctrl+C after its clean shutdown; that is a normal exit.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])


if __name__ == "__main__":
    main()
