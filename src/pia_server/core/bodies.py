"""Request bodies on the JSON routes: the raw bytes validated in one pass.

``Model.model_validate_json(raw)`` is measurably cheaper than a FastAPI ``body: Model``
parameter (stack findings: about a third more throughput on a sync push), and it lets every
route share one mapping of failures onto the error shape: 400 ``invalid_json`` or 400
``validation_failed`` with the failing fields named.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from pia_server.core.errors import ApiError, is_json_decode_error, pydantic_errors, validation_error

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if is_json_decode_error(exc):
            raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
        raise validation_error(pydantic_errors(exc)) from None


async def read_model(request: Request, model: type[M], *, empty: bytes = b"") -> M:
    """Validate the request body as ``model``; an empty body reads as ``empty``."""
    return parse_model(model, await request.body() or empty)
