"""The one error shape: ``{"error": "snake_case_code", "message": "...", ...}``.

Services raise :class:`ApiError` (or a domain subclass); the handlers installed by
:func:`install_error_handlers` turn it, and every framework error, into that JSON shape.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from pia_server.core.wire import error_field_path

JSON_MEDIA_TYPE = "application/json; charset=utf-8"


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape, as the OpenAPI document shows it (routes add their own keys)."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
    errors: list[FieldError] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "Error: `{error, message}`"},
    "5XX": {"model": ErrorBody, "description": "Server-side failure: `{error, message}`"},
}
log = structlog.get_logger("pia_server.errors")


class ApiError(Exception):
    """An error a client should see, with its status, code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


def validation_error(errors: list[dict[str, str]], message: str | None = None) -> ApiError:
    first = errors[0]["field"] if errors else "body"
    return ApiError(
        400,
        "validation_failed",
        message or f"The request is not valid ({first}: {errors[0]['message'] if errors else ''})",
        extra={"errors": errors},
    )


def pydantic_errors(exc: ValidationError | RequestValidationError) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:] if loc[0] == "body" else loc
        out.append({"field": error_field_path(loc) or "body", "message": str(err.get("msg", ""))})
    return out


def is_json_decode_error(exc: ValidationError | RequestValidationError) -> bool:
    return any(err.get("type") == "json_invalid" for err in exc.errors())


def json_error_body(code: str, message: str, **extra: Any) -> bytes:
    import json

    return json.dumps({"error": code, "message": message, **extra}, ensure_ascii=False).encode()


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return Response(
        content=json_error_body(code, message, **extra),
        status_code=status,
        media_type=JSON_MEDIA_TYPE,
        headers=headers,
    )


def api_error_response(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)


_STATUS_CODES = {
    400: ("bad_request", "The request could not be understood."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "This is not allowed."),
    404: ("not_found", "There is nothing at this address."),
    405: ("method_not_allowed", "This method is not allowed here."),
    406: ("not_acceptable", "The requested representation is not available."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "The request body must be JSON."),
    429: ("rate_limited", "Too many requests."),
}


def install_error_handlers(app: FastAPI) -> None:
    async def handle_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return api_error_response(exc)

    async def handle_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code, message = _STATUS_CODES.get(exc.status_code, ("http_error", "Request failed."))
        if isinstance(exc.detail, str) and exc.detail and exc.status_code not in (404, 405):
            message = exc.detail
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    async def handle_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        if is_json_decode_error(exc):
            return error_response(400, "invalid_json", "The request body is not valid JSON.")
        return api_error_response(validation_error(pydantic_errors(exc)))

    async def handle_database_error(request: Request, exc: Exception) -> Response:
        # A lost or refused database connection, or a wait for one past the checkout timeout
        # (core.waiting), is a 503 the client can retry, not a 500.
        log.warning("database_unavailable", error=type(exc).__name__)
        return error_response(
            503,
            "database_unavailable",
            "The database is busy or not reachable right now; try again shortly.",
            {"Retry-After": "5"},
        )

    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(ValidationError, handle_validation)
    app.add_exception_handler(PoolTimeoutError, handle_database_error)
    app.add_exception_handler(ConnectionError, handle_database_error)

    async def handle_dbapi_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        if _is_storage_full(exc):
            # The transaction was rolled back: nothing half-written, and the client can retry later.
            log.error("storage_full", error=type(exc.orig).__name__)
            return error_response(
                507,
                "storage_full",
                "The server's storage is full; nothing was saved. Try again later.",
                {"Retry-After": "60"},
            )
        if _is_refused_character(exc):
            # PostgreSQL text cannot hold U+0000; SQLite could, but the data must move freely.
            return error_response(
                400, "invalid_text", "Text values may not contain NUL (U+0000) characters."
            )
        if exc.connection_invalidated or _is_connection_problem(exc):
            return await handle_database_error(request, exc)
        raise exc

    app.add_exception_handler(DBAPIError, handle_dbapi_error)


def _is_refused_character(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return (
        "invalid byte sequence" in text
        or "characternotinrepertoire" in type(exc.orig).__name__.lower()
    )


def _is_storage_full(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "disk is full" in text or "no space left" in text or "disk full" in text


def _is_connection_problem(exc: DBAPIError) -> bool:
    # DB-API's OperationalError: the database's operation failed (disconnect, busy, out of
    # resources), not our SQL: a retryable 503 rather than a 500.
    if isinstance(exc, OperationalError):
        return True
    text = f"{type(exc.orig).__name__} {exc.orig}".lower()
    return any(
        marker in text
        for marker in ("connection", "connect", "closed", "terminat", "cannot perform operation")
    )
