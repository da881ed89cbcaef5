"""The request middleware (plain ASGI, so it costs microseconds, not a Starlette detour).

For every HTTP request it:
- assigns a request id (kept from ``X-Request-Id`` when it looks sane), binds it to the logs and
  returns it as ``X-Request-Id``;
- enforces the body size cap and inflates ``Content-Encoding: gzip`` bodies with a cap on the
  inflated size (a gzip bomb stops at the cap);
- refuses bodies that are not JSON (415) before any route sees them;
- turns an unhandled exception into a JSON 500 with the request id, logged with the same id;
- writes one access log line and the Prometheus request metrics by route template.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
import zlib
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pia_server.core.errors import JSON_MEDIA_TYPE, json_error_body
from pia_server.core.metrics import Metrics

log = structlog.get_logger("pia_server.access")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class BodyError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _is_json_type(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in (b"application/json", b"text/json") or media.endswith(b"+json")


def _inflate(body: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BodyError(400, "invalid_gzip", "The gzip request body could not be read.") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise BodyError(413, "payload_too_large", f"The inflated body exceeds {limit} bytes.")
    if not decompressor.eof:
        raise BodyError(400, "invalid_gzip", "The gzip request body is truncated.")
    return out


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, max_inflated_bytes: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.max_inflated = max_inflated_bytes
        # Request ids: a random prefix per process and a counter (unique across instances
        # without a system call per request, as uuid4 makes).
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count(1)

    def _new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming.decode("latin-1")
            if incoming and _REQUEST_ID_RE.match(incoming.decode("latin-1"))
            else self._new_request_id()
        )
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500, "sent": False}
        rid_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["sent"] = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                receive = await self._prepare_body(scope, receive)
            await self.app(scope, receive, send_wrapper)
        except BodyError as exc:
            await self._send_error(send_wrapper, exc.status, exc.code, exc.message)
        except Exception:
            log.exception("unhandled_exception", method=scope["method"], path=scope["path"])
            if not status_holder["sent"]:
                await self._send_error(
                    send_wrapper,
                    500,
                    "internal_error",
                    f"Something went wrong on the server (request id {request_id}).",
                    requestId=request_id,
                )
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            status = status_holder["status"]
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(scope["method"], template).observe(elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                route=template,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")

    async def _prepare_body(self, scope: Scope, receive: Receive) -> Receive:
        length_header = _header(scope, b"content-length")
        if length_header is not None:
            try:
                declared = int(length_header)
            except ValueError as exc:
                raise BodyError(400, "bad_request", "Content-Length is not a number.") from exc
            if declared > self.max_body:
                raise BodyError(
                    413, "payload_too_large", f"The request body exceeds {self.max_body} bytes."
                )
            if declared == 0:
                return receive
        elif _header(scope, b"transfer-encoding") is None:
            return receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyError(
                    413, "payload_too_large", f"The request body exceeds {self.max_body} bytes."
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        encoding = (_header(scope, b"content-encoding") or b"").strip().lower()
        if encoding == b"gzip" and body:
            body = _inflate(body, self.max_inflated)
            scope["headers"] = [
                (k, v)
                for k, v in scope["headers"]
                if k not in (b"content-encoding", b"content-length")
            ] + [(b"content-length", str(len(body)).encode())]
        elif encoding not in (b"", b"identity"):
            raise BodyError(
                415, "unsupported_media_type", "Only gzip request bodies can be decoded."
            )
        content_type = _header(scope, b"content-type")
        if body and content_type is not None and not _is_json_type(content_type):
            raise BodyError(415, "unsupported_media_type", "The request body must be JSON.")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    @staticmethod
    async def _send_error(send: Send, status: int, code: str, message: str, **extra: Any) -> None:
        body = json_error_body(code, message, **extra)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
