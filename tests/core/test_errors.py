"""Every error, from routes and from the framework, is JSON in one shape, with a request id."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import Field

from conftest import client_for, running_app
from pia_server.core.config import load_settings
from pia_server.core.wire import WireList, WireModel, WireTime


class Item(WireModel):
    name: str = Field(max_length=10)
    updated_at: WireTime


class Body(WireModel):
    items: WireList[Item] = Field(default_factory=list)


def _add_test_routes(app: FastAPI) -> None:
    async def echo(body: Body) -> Body:
        return body

    async def boom() -> None:
        raise RuntimeError("secret detail that must not reach the client")

    async def raw(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    app.add_api_route("/test/echo", echo, methods=["POST"], response_model=Body)
    app.add_api_route("/test/boom", boom, methods=["GET"])
    app.add_api_route("/test/raw", raw, methods=["POST"])


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # The error shape is the framework's business, not the database's: SQLite is enough here.
    settings = load_settings(
        environ={},
        overrides={
            "server": {
                "data_dir": str(tmp_path),
                "max_body_bytes": 4096,
                "max_inflated_bytes": 8192,
            },
            "auth": {"jwt_secret": "s" * 40},
        },
    )
    async with running_app(settings) as app:
        _add_test_routes(app)
        async with client_for(app) as client:
            yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers.get("x-request-id")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    return dict(body)


async def test_unknown_route(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/no/such/route"), 404, "not_found")


async def test_wrong_method(http: httpx.AsyncClient) -> None:
    assert_error(await http.delete("/healthz"), 405, "method_not_allowed")


async def test_bad_json(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/test/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


async def test_validation_is_400_with_field_paths(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/test/echo",
        json={
            "items": [
                {"name": "ok", "updatedAt": "2026-01-01T00:00:00Z"},
                {"name": "ok", "updatedAt": "not a time"},
            ]
        },
    )
    body = assert_error(response, 400, "validation_failed")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors[0]["field"] == "items[1].updatedAt"
    assert errors[0]["message"]


async def test_valid_body_round_trips(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/test/echo", json={"Items": [{"Name": "x", "UpdatedAt": "2026-01-01T00:00:00.1234567"}]}
    )
    assert response.status_code == 200
    assert response.json() == {
        "items": [{"name": "x", "updatedAt": "2026-01-01T00:00:00.1234567Z"}]
    }


async def test_body_too_large(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/test/raw",
        content=b"[" + b"1," * 4000 + b"1]",
        headers={"content-type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")


async def test_unsupported_media_type(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/test/echo",
        content=b"items=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 415, "unsupported_media_type")


async def test_unhandled_exception_is_500_with_request_id_and_no_detail(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await http.get("/test/boom", headers={"X-Request-Id": "req-abcdef123456"})
    body = assert_error(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "req-abcdef123456"
    assert body["requestId"] == "req-abcdef123456"
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if "unhandled_exception" in r.getMessage()]
    assert logged, "the failure must be logged"
    assert "req-abcdef123456" in caplog.text


async def test_gzip_body_is_inflated(http: httpx.AsyncClient) -> None:
    raw = json.dumps({"items": [{"name": "zip", "updatedAt": "2026-01-01T00:00:00Z"}]}).encode()
    response = await http.post(
        "/test/echo",
        content=gzip.compress(raw),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.json()["items"][0]["name"] == "zip"


async def test_gzip_bomb_stops_at_the_inflated_cap(http: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b" " * 1_000_000)  # ~1 KB compressed, 1 MB inflated
    assert len(bomb) < 4096
    response = await http.post(
        "/test/raw",
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(response, 413, "payload_too_large")


async def test_broken_gzip(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/test/raw",
        content=b"not gzip at all",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(response, 400, "invalid_gzip")


async def test_every_response_has_a_request_id(http: httpx.AsyncClient) -> None:
    ok = await http.get("/healthz")
    other = await http.get("/healthz")
    assert ok.headers["x-request-id"] != other.headers["x-request-id"]
