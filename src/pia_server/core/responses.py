"""JSON responses with the charset spelled out (``application/json; charset=utf-8``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from pia_server.core.errors import JSON_MEDIA_TYPE


class WireJSONResponse(JSONResponse):
    media_type = JSON_MEDIA_TYPE


def model_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialize a wire model straight to JSON bytes (camelCase, ``...Z`` timestamps)."""
    return Response(
        content=model.model_dump_json(by_alias=True),
        status_code=status_code,
        media_type=JSON_MEDIA_TYPE,
        headers=headers,
    )


def json_bytes_response(content: bytes, status_code: int = 200, **headers: Any) -> Response:
    return Response(
        content=content,
        status_code=status_code,
        media_type=JSON_MEDIA_TYPE,
        headers={k.replace("_", "-"): str(v) for k, v in headers.items()},
    )
