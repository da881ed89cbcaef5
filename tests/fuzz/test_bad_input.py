"""Hand-written hostile input: every answer is a clean JSON 4xx, never a 500, never a hang.

Each case states what a client (or attacker) would notice. Known server bugs are marked
``xfail(strict=True)`` with the failing input, so that the suite stays green and turns red the
moment a fix lands (then drop the mark).
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Scope

from .conftest import FuzzEnv

JSON = {"Content-Type": "application/json"}
TIMEOUT = 20.0


def assert_clean_error(response: httpx.Response, status: int | Iterable[int]) -> dict[str, Any]:
    """A JSON error of the expected status with the common ``{error, message}`` shape."""
    expected = {status} if isinstance(status, int) else set(status)
    assert response.status_code in expected, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str)
    assert body["error"]
    assert isinstance(body.get("message"), str)
    return body


def error_fields(body: dict[str, Any]) -> list[str]:
    return [str(item["field"]) for item in body.get("errors", [])]


def todo(id_: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()) if id_ is None else id_,
        "title": "Buy milk",
        "notes": None,
        "priority": 1,
        "status": 0,
        "createdAt": "2026-03-01T08:00:00.0000000Z",
        "updatedAt": "2026-03-02T08:00:00.1234567Z",
    }
    body.update(extra)
    return body


def push_body(**collections: Any) -> dict[str, Any]:
    return {
        "clientTimestamp": "2026-03-02T08:00:00.0000000Z",
        "lastSyncTimestamp": "0001-01-01T00:00:00",
        "deviceId": "fuzz-device",
        **collections,
    }


async def push(env: FuzzEnv, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return await env.client.post(
        "/api/sync/push", json=body, headers=headers or env.user.headers, timeout=TIMEOUT
    )


async def pull_todos(env: FuzzEnv, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await env.client.get("/api/sync/pull", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return list(response.json()["todos"]["upserted"])


async def raw_asgi(
    app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Drive the app with headers exactly as given: httpx would refuse CR/LF in a header, a
    misbehaving proxy in front of the server might not."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    path_only, _, query = path.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), list(start.get("headers", [])), content


def assert_headers_clean(headers: list[tuple[bytes, bytes]], *forbidden: bytes) -> None:
    for name, value in headers:
        assert b"\r" not in name + value, (name, value)
        assert b"\n" not in name + value, (name, value)
        for needle in forbidden:
            assert needle.lower() not in (name + b": " + value).lower(), (name, value)


# --------------------------------------------------------------------------------------------
# Size: bodies, nesting, gzip bombs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/sync/push", "/api/ai/optimize", "/auth/register"])
async def test_body_over_the_cap_is_413(env: FuzzEnv, path: str) -> None:
    cap = env.settings.server.max_body_bytes
    body = b'{"text": "' + b"a" * cap + b'"}'
    response = await env.client.post(
        path, content=body, headers={**JSON, **env.user.headers}, timeout=TIMEOUT
    )
    assert assert_clean_error(response, 413)["error"] == "payload_too_large"


async def test_chunked_body_over_the_cap_is_413(env: FuzzEnv) -> None:
    """Without Content-Length (chunked upload), the cap is counted while reading."""
    cap = env.settings.server.max_body_bytes

    async def chunks() -> Any:
        for _ in range(cap // 8192 + 2):
            yield b"[" * 8192

    response = await env.client.post(
        "/api/sync/push", content=chunks(), headers={**JSON, **env.user.headers}, timeout=TIMEOUT
    )
    assert "content-length" not in response.request.headers
    assert assert_clean_error(response, 413)["error"] == "payload_too_large"


async def test_a_body_just_under_the_cap_is_read(env: FuzzEnv) -> None:
    """The cap refuses what is over it, not a large legitimate push."""
    cap = env.settings.server.max_body_bytes
    notes = "n" * (cap - 2000)
    response = await push(env, push_body(todos={"upserted": [todo(notes=notes)], "deleted": []}))
    assert response.status_code == 200, response.text[:300]
    assert response.json()["upserted"] == 1


DEEP = 100_000


# The chat routes parse the body with the standard library's recursive ``json.loads``.
@pytest.mark.parametrize(
    "path",
    [
        "/api/sync/push",
        "/api/ai/optimize",
        "/api/ai/chat/completions",
        "/api/ai/chat",
        "/api/e2ee/devices/register",
        "/auth/register",
        "/auth/login/local",
        "/auth/refresh",
    ],
)
async def test_deep_nesting_is_refused(env: FuzzEnv, path: str) -> None:
    body = b"[" * DEEP + b"]" * DEEP
    response = await env.client.post(
        path, content=body, headers={**JSON, **env.user.headers}, timeout=TIMEOUT
    )
    assert_clean_error(response, 400)


@pytest.mark.parametrize(
    "path", ["/api/sync/push", "/api/ai/optimize", "/auth/login/local", "/api/e2ee/devices/revoke"]
)
async def test_deep_object_nesting_is_refused(env: FuzzEnv, path: str) -> None:
    depth = DEEP // 2  # 50,000 levels of {"a": ...}: 300 KB, under the body cap
    body = b'{"a":' * depth + b"1" + b"}" * depth
    response = await env.client.post(
        path, content=body, headers={**JSON, **env.user.headers}, timeout=TIMEOUT
    )
    assert_clean_error(response, 400)


@pytest.mark.parametrize(
    ("path", "make_body"),
    [
        ("/api/sync/push", lambda nested: push_body(todos={"upserted": [todo(extra=nested)]})),
        ("/api/ai/optimize", lambda nested: {"text": "hello", "extra": nested}),
        pytest.param(
            "/api/ai/chat/completions",
            lambda nested: {"messages": [{"role": "user", "content": "hi"}], "tools": nested},
        ),
    ],
    ids=["push-extra-field", "optimize-extra-field", "chat-tools"],
)
async def test_deep_nesting_inside_a_valid_body_is_refused(
    env: FuzzEnv, path: str, make_body: Any
) -> None:
    """Nesting hidden in a field the server keeps or forwards (unknown keys round-trip)."""
    marker = "__NESTED__"
    body = json.dumps(make_body(marker)).encode()
    body = body.replace(json.dumps(marker).encode(), b"[" * DEEP + b"]" * DEEP)
    response = await env.client.post(
        path, content=body, headers={**JSON, **env.user.headers}, timeout=TIMEOUT
    )
    assert_clean_error(response, 400)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


async def test_gzip_bomb_stops_at_the_inflated_cap(env: FuzzEnv) -> None:
    """64 MB of zeros in about 64 KB of gzip: refused once inflating passes the cap."""
    bomb = _gzip(b"\0" * (64 * 1024 * 1024))
    assert len(bomb) < env.settings.server.max_body_bytes
    response = await env.client.post(
        "/api/sync/push",
        content=bomb,
        headers={**JSON, "Content-Encoding": "gzip", **env.user.headers},
        timeout=TIMEOUT,
    )
    assert assert_clean_error(response, 413)["error"] == "payload_too_large"


async def test_gzip_bomb_of_json_stops_at_the_inflated_cap(env: FuzzEnv) -> None:
    """A valid-looking JSON document that inflates past the cap (whitespace padding)."""
    cap = env.settings.server.max_inflated_bytes
    bomb = _gzip(b'{"deviceId": "x"' + b" " * (cap * 4) + b"}")
    response = await env.client.post(
        "/api/sync/push",
        content=bomb,
        headers={**JSON, "Content-Encoding": "gzip", **env.user.headers},
        timeout=TIMEOUT,
    )
    assert assert_clean_error(response, 413)["error"] == "payload_too_large"


async def test_gzip_nested_bomb_is_read_once(env: FuzzEnv) -> None:
    """gzip inside gzip is inflated once; the inner layer is not JSON."""
    inner = _gzip(b"\0" * (8 * 1024 * 1024))
    response = await env.client.post(
        "/api/sync/push",
        content=_gzip(inner),
        headers={**JSON, "Content-Encoding": "gzip", **env.user.headers},
        timeout=TIMEOUT,
    )
    assert_clean_error(response, 400)


@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", _gzip(b'{"deviceId": "x"}')[:-12], b"\x1f\x8b" + b"\0" * 30],
    ids=["garbage", "truncated", "bad-header"],
)
async def test_broken_gzip_is_400(env: FuzzEnv, body: bytes) -> None:
    response = await env.client.post(
        "/api/sync/push",
        content=body,
        headers={**JSON, "Content-Encoding": "gzip", **env.user.headers},
        timeout=TIMEOUT,
    )
    assert assert_clean_error(response, 400)["error"] == "invalid_gzip"


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "gzip, br"])
async def test_unknown_content_encoding_is_415(env: FuzzEnv, encoding: str) -> None:
    response = await env.client.post(
        "/api/sync/push",
        content=b'{"deviceId": "x"}',
        headers={**JSON, "Content-Encoding": encoding, **env.user.headers},
        timeout=TIMEOUT,
    )
    assert_clean_error(response, 415)


# --------------------------------------------------------------------------------------------
# Encoding and text
# --------------------------------------------------------------------------------------------

INVALID_UTF8 = [
    b'{"text": "\xff\xfe\xfd"}',
    b'{"text": "\xc3\x28"}',  # a lead byte without its continuation
    b'{"text": "\xc0\xaf"}',  # overlong "/"
    b'{"text": "\xed\xa0\x80"}',  # a UTF-16 surrogate encoded as UTF-8
    b'{"text": "ok"}\xff',
]


@pytest.mark.parametrize("body", INVALID_UTF8, ids=range(len(INVALID_UTF8)))
@pytest.mark.parametrize(
    "path", ["/api/ai/optimize", "/api/sync/push", "/auth/login/local", "/api/e2ee/devices/revoke"]
)
async def test_invalid_utf8_is_400(env: FuzzEnv, path: str, body: bytes) -> None:
    response = await env.client.post(
        path, content=body, headers={**JSON, **env.user.headers}, timeout=TIMEOUT
    )
    assert_clean_error(response, 400)


async def test_optimize_text_length_limit(env: FuzzEnv) -> None:
    limit = env.settings.ai.max_text_length
    assert limit == 10_000
    too_long = await env.client.post(
        "/api/ai/optimize", json={"text": "a" * (limit + 1)}, headers=env.user.headers
    )
    assert assert_clean_error(too_long, 400)["error"] == "text_too_long"
    at_limit = await env.client.post(
        "/api/ai/optimize", json={"text": "a" * limit}, headers=env.user.headers
    )
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["optimizedText"]


async def test_optimize_length_counts_characters_not_bytes(env: FuzzEnv) -> None:
    """10,001 astral characters (40 KB of UTF-8, 20,002 UTF-16 units) are still too long; 10,000
    of them are fine."""
    limit = env.settings.ai.max_text_length
    too_long = await env.client.post(
        "/api/ai/optimize", json={"text": "😀" * (limit + 1)}, headers=env.user.headers
    )
    assert assert_clean_error(too_long, 400)["error"] == "text_too_long"


@pytest.mark.parametrize(
    "text",
    [b"\\u0000\\u0001\\u200b\\u202e", b"\\ud800", b"\\udfff\\ud800"],
    ids=["controls", "lone", "reversed-pair"],
)
async def test_optimize_text_of_nothing_printable(env: FuzzEnv, text: bytes) -> None:
    """Only control, zero-width or unpaired surrogate characters (JSON escapes: valid JSON, not
    valid Unicode text): a clean 400, or an answer; never a 500."""
    response = await env.client.post(
        "/api/ai/optimize",
        content=b'{"text": "' + text + b'"}',
        headers={**JSON, **env.user.headers},
    )
    if response.status_code != 200:
        assert_clean_error(response, 400)


@pytest.mark.parametrize("field", ["title", "notes", "deviceId"])
async def test_lone_surrogates_in_synced_text(env: FuzzEnv, field: str) -> None:
    """A lone surrogate escape is refused or kept: no 500."""
    record = todo(**{field: "__LONE__"})
    body = json.dumps(push_body(todos={"upserted": [record], "deleted": []}))
    response = await env.client.post(
        "/api/sync/push",
        content=body.replace("__LONE__", "a\\ud800b").encode(),
        headers={**JSON, **env.user.headers},
    )
    if response.status_code == 200:
        pulled = await pull_todos(env, env.user.headers)
        assert [t["id"] for t in pulled] == [record["id"]]
    else:
        assert_clean_error(response, 400)


async def test_nul_in_synced_text_round_trips(env: FuzzEnv) -> None:
    """U+0000 inside a record's text (stored in a JSON document) comes back as sent."""
    record = todo(title="a\u0000b", notes="\u0000")
    response = await push(env, push_body(todos={"upserted": [record], "deleted": []}))
    assert response.status_code == 200, response.text
    pulled = await pull_todos(env, env.user.headers)
    assert pulled[0]["title"] == "a\u0000b"


async def test_nul_in_push_device_id(env: FuzzEnv) -> None:
    response = await push(env, {"deviceId": "a\u0000b"})
    assert response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/e2ee/devices/revoke", {"deviceId": "a\u0000b"}),
        ("GET", "/api/e2ee/devices/a%00b/status", None),
        ("POST", "/auth/login/local", {"email": "a\u0000b@example.com", "password": "x"}),
        (
            "POST",
            "/auth/register",
            {"email": "nul@example.com", "password": "long-enough-1", "displayName": "a\u0000b"},
        ),
        ("POST", "/auth/register", {"email": "a\u0000b@example.com", "password": "long-enough-1"}),
    ],
    ids=["e2ee-revoke-body", "e2ee-status-path", "login-email", "register-name", "register-email"],
)
async def test_nul_in_identifiers(env: FuzzEnv, method: str, path: str, body: Any) -> None:
    response = await env.client.request(method, path, json=body, headers=env.user.headers)
    assert response.status_code < 500, response.text
    if path == "/auth/register" and "\u0000" in body["email"]:
        assert_clean_error(response, 400)  # not an email address, on any backend


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------

BAD_TIMESTAMPS = [
    "0000-01-01T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "+10000-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",  # in UTC: year 10000
    "9999-12-31T23:59:59.9999999-00:01",
    "0001-01-01T00:00:00+01:00",  # in UTC: year 0
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T25:00:00Z",
    "2026-01-01T00:00:00+25:00",
    "2026-01-01T00:00:00.12345678901234567890Z",
    "not a date",
    "",
    "' OR 1=1 --",
]


@pytest.mark.parametrize("value", BAD_TIMESTAMPS)
async def test_out_of_range_record_timestamp_is_400_naming_the_field(
    env: FuzzEnv, value: str
) -> None:
    response = await push(env, push_body(todos={"upserted": [todo(updatedAt=value)]}))
    body = assert_clean_error(response, 400)
    assert body["error"] == "validation_failed"
    assert "todos.upserted[0].updatedAt" in error_fields(body)
    assert await pull_todos(env, env.user.headers) == []


@pytest.mark.parametrize("value", [1e20, -1, 10**30, True, [], {}])
async def test_non_text_record_timestamp_is_400(env: FuzzEnv, value: Any) -> None:
    response = await push(env, push_body(todos={"upserted": [todo(updatedAt=value)]}))
    assert "todos.upserted[0].updatedAt" in error_fields(assert_clean_error(response, 400))


@pytest.mark.parametrize(
    ("sent", "returned"),
    [
        ("0001-01-01T00:00:00", "0001-01-01T00:00:00.0000000Z"),
        ("9999-12-31T23:59:59.9999999", "9999-12-31T23:59:59.9999999Z"),
        ("9999-12-31T23:59:59.9999999Z", "9999-12-31T23:59:59.9999999Z"),
        ("9999-12-31T23:59:59.9999999+00:00", "9999-12-31T23:59:59.9999999Z"),
        ("2026-03-27T14:34:56.1234567+02:00", "2026-03-27T12:34:56.1234567Z"),
    ],
)
async def test_extreme_but_valid_timestamps_round_trip(
    env: FuzzEnv, sent: str, returned: str
) -> None:
    record = todo(updatedAt=sent, dueDate=sent)
    response = await push(env, push_body(todos={"upserted": [record]}))
    assert response.status_code == 200, response.text
    pulled = await pull_todos(env, env.user.headers)
    assert pulled[0]["updatedAt"] == returned
    assert pulled[0]["dueDate"] == returned


@pytest.mark.parametrize(
    "since",
    [
        "garbage",
        "10000-01-01T00:00:00Z",
        "0000-01-01T00:00:00",
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+14:00",
        "2026-02-30",
        "1e309",
        "99999999999999999999999",
        "' OR '1'='1",
        "2026-01-01T00:00:00Z; DROP TABLE sync_records; --",
        "\u0000",
        "%",
    ],
)
async def test_pull_since_garbage_is_400_naming_since(env: FuzzEnv, since: str) -> None:
    response = await env.client.get(
        "/api/sync/pull", params={"since": since}, headers=env.user.headers
    )
    body = assert_clean_error(response, 400)
    assert "since" in error_fields(body)


@pytest.mark.parametrize("limit", ["-1", "0", "abc", "1e3", "9" * 40])
async def test_pull_limit_garbage_is_never_500(env: FuzzEnv, limit: str) -> None:
    response = await env.client.get(
        "/api/sync/pull", params={"limit": limit}, headers=env.user.headers
    )
    if response.status_code != 200:
        assert_clean_error(response, 400)


@pytest.mark.parametrize("cursor", ["c1.", "c1.!!!!", "c1." + "A" * 5000, "c2.MA", "💥"])
async def test_pull_cursor_garbage_is_400(env: FuzzEnv, cursor: str) -> None:
    response = await env.client.get(
        "/api/sync/pull", params={"cursor": cursor}, headers=env.user.headers
    )
    assert assert_clean_error(response, 400)["error"] == "invalid_cursor"


@pytest.mark.parametrize("before", ["abc", "-1", "1.5", "' OR 1=1 --"])
async def test_events_before_garbage_is_400(env: FuzzEnv, before: str) -> None:
    response = await env.client.get(
        "/api/sync/events", params={"before": before}, headers=env.user.headers
    )
    assert_clean_error(response, 400)


@pytest.mark.parametrize("before", [str(2**63), "99999999999999999999"])
async def test_events_before_past_int64_is_400(env: FuzzEnv, before: str) -> None:
    response = await env.client.get(
        "/api/sync/events", params={"before": before}, headers=env.user.headers
    )
    assert_clean_error(response, 400)


# --------------------------------------------------------------------------------------------
# GUIDs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        lambda g: g.upper(),
        lambda g: "{" + g + "}",
        lambda g: g.replace("-", ""),
        lambda g: "urn:uuid:" + g,
    ],
    ids=["upper", "braces", "no-hyphens", "urn"],
)
async def test_odd_guid_forms_are_accepted_and_echoed_canonical(env: FuzzEnv, form: Any) -> None:
    canonical = str(uuid.uuid4())
    column = str(uuid.uuid4())
    record = todo(form(canonical), columnId=form(column))
    response = await push(env, push_body(todos={"upserted": [record], "deleted": []}))
    assert response.status_code == 200, response.text
    pulled = await pull_todos(env, env.user.headers)
    assert [t["id"] for t in pulled] == [canonical]
    assert pulled[0]["columnId"] == column
    # The same record in its canonical form is the same record, not a second one.
    again = await push(env, push_body(todos={"upserted": [todo(canonical)], "deleted": []}))
    assert again.json()["unchanged"] == 1
    deleted = await push(env, push_body(todos={"upserted": [], "deleted": [form(canonical)]}))
    assert deleted.json()["deleted"] == 1
    response = await env.client.get("/api/sync/pull", headers=env.user.headers)
    assert response.json()["todos"]["deleted"] == [canonical]


BAD_GUIDS = [
    "not-a-guid",
    "00000000-0000-0000-0000-00000000000g",
    "0000000-0000-0000-0000-000000000000",
    "{00000000-0000-0000-0000-000000000000",
    "' OR '1'='1",
    "1; DROP TABLE sync_records; --",
    "a" * 10_000,
    "\u0000",
]


@pytest.mark.parametrize("bad", BAD_GUIDS, ids=range(len(BAD_GUIDS)))
async def test_garbage_guid_is_400_naming_the_field(env: FuzzEnv, bad: str) -> None:
    upsert = await push(env, push_body(todos={"upserted": [todo(bad)], "deleted": []}))
    assert "todos.upserted[0].id" in error_fields(assert_clean_error(upsert, 400))
    column = await push(env, push_body(todos={"upserted": [todo(columnId=bad)]}))
    assert "todos.upserted[0].columnId" in error_fields(assert_clean_error(column, 400))
    delete = await push(env, push_body(memories={"upserted": [], "deleted": [bad]}))
    assert "memories.deleted[0]" in error_fields(assert_clean_error(delete, 400))
    assert await pull_todos(env, env.user.headers) == []


async def test_empty_string_id_is_refused_or_mapped(env: FuzzEnv) -> None:
    first = await push(env, push_body(todos={"upserted": [todo("")], "deleted": []}))
    if first.status_code == 400:
        assert "todos.upserted[0].id" in error_fields(first.json())
        return
    assert first.json()["idMappings"], first.text
    await push(env, push_body(todos={"upserted": [todo("")], "deleted": []}))
    assert len(await pull_todos(env, env.user.headers)) == 1


@pytest.mark.parametrize("value", [12345, 1.5, True, ["x"], {"a": 1}])
async def test_non_string_guid_is_400(env: FuzzEnv, value: Any) -> None:
    response = await push(env, push_body(todos={"upserted": [todo(value)]}))
    assert "todos.upserted[0].id" in error_fields(assert_clean_error(response, 400))


@pytest.mark.parametrize(
    "template_id", ["not-a-guid", "' OR 1=1 --", "00000001-0000-0000-0000-0000000000055"]
)
async def test_optimize_garbage_template_id(env: FuzzEnv, template_id: str) -> None:
    response = await env.client.post(
        "/api/ai/optimize",
        json={"text": "hello", "templateId": template_id},
        headers=env.user.headers,
    )
    assert assert_clean_error(response, 400)["error"] == "unknown_template"


async def test_optimize_builtin_template_id_in_odd_form(env: FuzzEnv) -> None:
    response = await env.client.post(
        "/api/ai/optimize",
        json={"text": "hello", "templateId": "{00000001-0000-0000-0000-000000000005}"},
        headers=env.user.headers,
    )
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------------------------
# SQL injection
# --------------------------------------------------------------------------------------------

INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    '" OR ""="',
    "1; SELECT pg_sleep(5); --",
    "' UNION SELECT id, email, password_hash FROM users --",
    "%' OR 1=1 --",
    "\\'; DELETE FROM sync_records; --",
]


async def test_sql_injection_changes_nothing_for_other_users(env: FuzzEnv) -> None:
    """Another user's data survives every injection attempt, and no attempt reaches it."""
    victim = todo(title="victim's secret")
    stored = await push(
        env, push_body(todos={"upserted": [victim], "deleted": []}), env.other.headers
    )
    assert stored.status_code == 200, stored.text

    for payload in INJECTIONS:
        attempts = [
            env.client.post(
                "/auth/login/local",
                json={"email": f"{payload}@example.com", "password": payload},
            ),
            env.client.post(
                "/auth/login/local", json={"email": env.other.email, "password": payload}
            ),
            env.client.post(
                "/auth/register",
                json={"email": f"x{payload}@example.com", "password": "long-enough-1"},
            ),
            env.client.post("/auth/forgot-password", json={"email": payload}),
            env.client.post(
                "/auth/reset-password",
                json={"email": env.other.email, "token": payload, "newPassword": "long-enough-1"},
            ),
            env.client.post("/auth/refresh", json={"refreshToken": payload}),
            env.client.get("/api/sync/pull", params={"since": payload}, headers=env.user.headers),
            env.client.get("/api/sync/pull", params={"cursor": payload}, headers=env.user.headers),
            env.client.get(
                "/api/sync/events", params={"before": payload}, headers=env.user.headers
            ),
            env.client.post(
                "/api/e2ee/devices/revoke", json={"deviceId": payload}, headers=env.user.headers
            ),
            env.client.get(
                f"/api/e2ee/devices/{httpx.URL(path=payload).raw_path.decode()}/status",
                headers=env.user.headers,
            ),
            env.client.post(
                "/api/ai/optimize",
                json={"text": "hi", "templateId": payload},
                headers=env.user.headers,
            ),
            env.client.post(
                "/api/sync/push",
                json=push_body(
                    deviceId=payload,
                    todos={"upserted": [todo(title=payload, notes=payload)], "deleted": []},
                ),
                headers=env.user.headers,
            ),
            env.client.post(
                "/api/sync/push",
                json=push_body(todos={"upserted": [], "deleted": [payload]}),
                headers=env.user.headers,
            ),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status_code < 500, (payload, response.request.url, response.text)
            if response.status_code >= 400:
                assert_clean_error(response, range(400, 500))

    # The victim still has exactly their record; the attacker only ever sees their own.
    theirs = await pull_todos(env, env.other.headers)
    assert [(t["id"], t["title"]) for t in theirs] == [(victim["id"], "victim's secret")]
    mine = await pull_todos(env, env.user.headers)
    assert victim["id"] not in {t["id"] for t in mine}
    # Injection text stored as data comes back verbatim (it was a value, never SQL).
    assert {t["title"] for t in mine} == set(INJECTIONS)
    me = await env.client.get("/auth/me", headers=env.other.headers)
    assert me.status_code == 200
    assert me.json()["email"] == env.other.email


async def test_sql_like_wildcards_in_email_match_nothing(env: FuzzEnv) -> None:
    """``%`` and ``_`` are not LIKE patterns: they do not sign in as someone else."""
    for email in ["%", "%@example.com", "_" * len(env.other.email), env.other.email.upper() + "%"]:
        response = await env.client.post(
            "/auth/login/local", json={"email": email, "password": "whatever-123"}
        )
        assert_clean_error(response, (400, 401))


# --------------------------------------------------------------------------------------------
# Headers: injection, oversize
# --------------------------------------------------------------------------------------------

CRLF_VALUES = [
    b"abcdefgh12345678\r\nSet-Cookie: injected=1",
    b"abcdefgh12345678\nX-Injected: 1",
    b"abcdefgh12345678\rX-Injected: 1",
    b"abcdefgh%0d%0aX-Injected:%201",
]


@pytest.mark.parametrize("value", CRLF_VALUES, ids=range(len(CRLF_VALUES)))
async def test_crlf_in_request_id_is_not_reflected(env: FuzzEnv, value: bytes) -> None:
    status, headers, _ = await raw_asgi(
        env.app,
        "GET",
        "/api/sync/status",
        [(b"x-request-id", value), (b"authorization", env.user.headers["Authorization"].encode())],
    )
    assert status == 200
    assert_headers_clean(headers, b"injected")
    request_id = dict(headers)[b"x-request-id"]
    assert request_id != value
    assert len(request_id) == 32  # a fresh id replaces one that does not look sane


async def test_sane_request_id_is_kept(env: FuzzEnv) -> None:
    response = await env.client.get("/healthz", headers={"X-Request-Id": "client-req-0001"})
    assert response.headers["x-request-id"] == "client-req-0001"


@pytest.mark.parametrize("value", CRLF_VALUES, ids=range(len(CRLF_VALUES)))
async def test_crlf_in_pia_mode_is_400_and_not_reflected(env: FuzzEnv, value: bytes) -> None:
    status, headers, body = await raw_asgi(
        env.app,
        "POST",
        "/api/ai/optimize",
        [
            (b"x-pia-mode", b"Optimize" + value),
            (b"authorization", env.user.headers["Authorization"].encode()),
            (b"content-type", b"application/json"),
        ],
        b'{"text": "hello"}',
    )
    assert status == 400
    assert json.loads(body)["error"] == "invalid_mode"
    assert_headers_clean(headers, b"injected")


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer x\r\nSet-Cookie: injected=1",
        b"Bearer " + b"\r\n" * 10,
        b"Bearer\r\n\tcontinued-line",
        b"Bearer " + b"\x00" * 8,
        b"Bearer \xff\xfe\xfd",
    ],
)
async def test_bad_bytes_in_authorization_are_401_and_not_reflected(
    env: FuzzEnv, value: bytes
) -> None:
    for method, path, body in [
        ("GET", "/api/sync/status", b""),
        ("GET", "/auth/me", b""),
        ("POST", "/api/ai/optimize", b'{"text": "hello"}'),
    ]:
        status, headers, content = await raw_asgi(
            env.app,
            method,
            path,
            [(b"authorization", value), (b"content-type", b"application/json")],
            body,
        )
        assert status == 401, (path, content)
        assert json.loads(content)["error"]
        assert_headers_clean(headers, b"injected", b"continued")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Authorization", "Bearer " + "a" * 100_000),
        ("Authorization", "Bearer " + ".".join(["a" * 30_000] * 3)),
        ("X-Request-Id", "a" * 100_000),
        ("X-Pia-Mode", "Optimize" * 10_000),
        ("If-None-Match", '"' + "e" * 100_000 + '"'),
        ("Accept", "application/json, " * 5_000),
        ("Content-Type", "application/json; charset=" + "x" * 50_000),
    ],
    ids=["authz", "authz-jwt-shaped", "request-id", "mode", "if-none-match", "accept", "ctype"],
)
async def test_oversize_headers_get_a_clean_answer(env: FuzzEnv, name: str, value: str) -> None:
    """Behind a server with no header cap (or a generous one), a huge header is still only a
    header: a clean 4xx or an ordinary answer, and never echoed back."""
    headers = {**env.user.headers, **JSON, name: value}
    for method, path in [("GET", "/api/sync/pull"), ("POST", "/api/ai/optimize")]:
        response = await env.client.request(
            method, path, headers=headers, json={"text": "hello"} if method == "POST" else None
        )
        assert response.status_code < 500, (name, path, response.text[:200])
        if response.status_code >= 400:
            assert_clean_error(response, range(400, 500))
        for header_value in response.headers.values():
            assert len(header_value) < 1000


async def test_many_headers(env: FuzzEnv) -> None:
    headers = [(f"x-junk-{i}".encode(), b"v" * 100) for i in range(2_000)]
    headers.append((b"authorization", env.user.headers["Authorization"].encode()))
    status, _, _ = await raw_asgi(env.app, "GET", "/api/sync/status", headers)
    assert status == 200


async def test_duplicate_authorization_headers(env: FuzzEnv) -> None:
    """Two Authorization headers (the victim's and garbage) never mix identities or crash."""
    status, _, body = await raw_asgi(
        env.app,
        "GET",
        "/auth/me",
        [
            (b"authorization", b"Bearer garbage"),
            (b"authorization", env.other.headers["Authorization"].encode()),
        ],
    )
    assert status in (200, 400, 401), body
    if status == 200:
        assert json.loads(body)["id"] in (env.user.id, env.other.id)


# --------------------------------------------------------------------------------------------
# Content-Type and empty bodies
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/jsonx",
        "",
    ],
)
@pytest.mark.parametrize("path", ["/api/sync/push", "/api/ai/optimize", "/auth/login/local"])
async def test_wrong_content_type_is_415(env: FuzzEnv, path: str, content_type: str) -> None:
    response = await env.client.post(
        path,
        content=b'{"text": "hello", "email": "a@example.com", "password": "x"}',
        headers={**env.user.headers, "Content-Type": content_type},
    )
    assert assert_clean_error(response, 415)["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.pia+json", "text/json"]
)
async def test_json_content_types_are_accepted(env: FuzzEnv, content_type: str) -> None:
    response = await env.client.post(
        "/api/ai/optimize",
        content=b'{"text": "hello"}',
        headers={**env.user.headers, "Content-Type": content_type},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body", [b"", b" ", b"null", b"[]", b'"text"', b"0", b"{"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/sync/push",
        "/api/ai/optimize",
        "/api/ai/generate-prompt",
        "/api/ai/chat/completions",
        "/api/ai/chat",
        "/api/e2ee/devices/register",
        "/api/e2ee/devices/approve",
        "/api/e2ee/devices/revoke",
        "/api/e2ee/recovery/activate",
        "/auth/register",
        "/auth/login/local",
        "/auth/refresh",
        "/auth/reset-password",
    ],
)
async def test_empty_or_non_object_body_is_400(env: FuzzEnv, path: str, body: bytes) -> None:
    response = await env.client.post(
        path, content=body, headers={**JSON, **env.user.headers}, timeout=TIMEOUT
    )
    assert_clean_error(response, 400)


async def test_empty_body_on_the_client_revoke_route_is_its_normal_form(env: FuzzEnv) -> None:
    """``POST /api/e2ee/devices/{id}/revoke`` is sent with no body and no Content-Type."""
    response = await env.client.post(
        "/api/e2ee/devices/unknown-device/revoke", headers=env.user.headers
    )
    assert assert_clean_error(response, 404)["error"] == "device_not_found"


async def test_content_length_lies_are_handled(env: FuzzEnv) -> None:
    for length in [b"abc", b"-1", b"99999999999999999999999"]:
        status, _, body = await raw_asgi(
            env.app,
            "POST",
            "/api/sync/push",
            [
                (b"content-type", b"application/json"),
                (b"content-length", length),
                (b"authorization", env.user.headers["Authorization"].encode()),
            ],
            b'{"deviceId": "x"}',
        )
        # A real server refuses these before the app; the app must at least not crash.
        assert status < 500, (length, body)
