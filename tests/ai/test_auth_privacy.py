"""Optional auth, the caller's own templates, and no prompt text in the database or logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pia_server.ai import service as ai_service
from pia_server.ai.storage import ai_usage
from pia_server.core.context import AppContext
from pia_server.core.database import metadata
from pia_server.sync.lookup import UserTemplate
from support.fake_upstreams import Scenario

from .conftest import EnvFactory, ai_section

CHAT = {"model": "pia-cloud", "messages": [{"role": "user", "content": "hi"}]}
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/ai/optimize", {"text": "hi"}),
    ("/api/ai/generate-prompt", {"styleDescription": "terse"}),
    ("/api/ai/chat/completions", CHAT),
    ("/api/ai/chat", {"messages": CHAT["messages"]}),
]


async def test_anonymous_refused_unless_allowed(ai_env: EnvFactory, upstream: Any) -> None:
    async with ai_env() as env:
        for path, body in ROUTES:
            for headers in ({}, {"Authorization": "Bearer anonymous"}):
                response = await env.client.post(path, json=body, headers=headers)
                assert response.status_code == 401, path
                assert response.json()["error"] == "authentication_required"
        # The public routes need no sign-in.
        assert (await env.client.get("/api/ai/status")).status_code == 200
        assert (await env.client.get("/api/ai/templates")).status_code == 200
    assert upstream.requests == []
    async with ai_env(ai=ai_section(upstream, allow_anonymous=True)) as env:
        for path, body in ROUTES:
            response = await env.client.post(
                path, json=body, headers={"Authorization": "Bearer anonymous"}
            )
            assert response.status_code == 200, path


async def test_bad_token_is_401_even_when_anonymous_is_allowed(
    ai_env: EnvFactory, upstream: Any
) -> None:
    async with ai_env(ai=ai_section(upstream, allow_anonymous=True)) as env:
        for path, body in ROUTES:
            response = await env.client.post(
                path, json=body, headers={"Authorization": "Bearer not.a.jwt"}
            )
            assert response.status_code == 401, path
            assert response.json()["error"] != "authentication_required"
    assert upstream.requests == []


async def test_own_synced_template(ai_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    plain_id = "aaaaaaaa-0000-4000-8000-000000000001"
    secret_id = "aaaaaaaa-0000-4000-8000-000000000002"
    asked: list[tuple[str, str]] = []

    async def lookup(conn: Any, user_id: str, template_id: str) -> UserTemplate | None:
        asked.append((user_id, template_id))
        if template_id == plain_id:
            return UserTemplate(name="Mine", prompt="Say it like Yoda.", encrypted=False)
        if template_id == secret_id:
            return UserTemplate(name=None, prompt=None, encrypted=True)
        return None

    monkeypatch.setattr(ai_service, "find_user_template", lookup)
    async with ai_env() as env:
        own = await env.client.post(
            "/api/ai/optimize", json={"text": "hi", "templateId": plain_id}, headers=env.headers
        )
        system = env.upstream.last_request.body["messages"][0]["content"]
        encrypted = await env.client.post(
            "/api/ai/optimize", json={"text": "hi", "templateId": secret_id}, headers=env.headers
        )
        encrypted_with_text = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hi", "templateId": secret_id, "customPrompt": "Decrypted prompt."},
            headers=env.headers,
        )
    assert own.status_code == 200
    assert system.startswith("Say it like Yoda.")
    assert encrypted.status_code == 400
    assert encrypted.json()["error"] == "unknown_template"
    assert encrypted_with_text.status_code == 200
    # Only ever the caller's own id is looked up.
    assert {user for user, _ in asked} == {env.user.id}


async def test_anonymous_callers_cannot_use_synced_templates(
    ai_env: EnvFactory, upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lookup(conn: Any, user_id: str, template_id: str) -> UserTemplate:
        raise AssertionError("no lookup without a user")

    monkeypatch.setattr(ai_service, "find_user_template", lookup)
    async with ai_env(ai=ai_section(upstream, allow_anonymous=True)) as env:
        response = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hi", "templateId": "aaaaaaaa-0000-4000-8000-000000000001"},
        )
    assert response.status_code == 400


MARKER = "ZEBRA-MARKER-7f3a91"


async def _database_text(app: Any, backend: str) -> bytes:
    ctx: AppContext = app.state.ctx
    if backend == "sqlite":
        path = Path(ctx.settings.database_url.removeprefix("sqlite+aiosqlite:///"))
        await ctx.db.dispose()
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())
    out: list[str] = []
    async with ctx.db.read() as conn:
        for table in metadata.sorted_tables:
            rows = await conn.execute(
                text(f'SELECT CAST(row_to_json(t) AS text) FROM "{table.name}" t')
            )
            out.extend(str(r[0]) for r in rows)
    return "\n".join(out).encode()


async def test_no_prompt_or_completion_text_is_stored_or_logged(
    ai_env: EnvFactory,
    backend: str,
    caplog: pytest.LogCaptureFixture,
    capfd: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ai_env() as env:
        headers = env.headers
        env.upstream.scenario = Scenario(reply_text=f"reply {MARKER} done")
        for path, body in ROUTES:
            marked = {
                "/api/ai/optimize": {"text": f"hi {MARKER}", "customPrompt": f"p {MARKER}"},
                "/api/ai/generate-prompt": {"styleDescription": MARKER},
            }.get(path, {**body, "messages": [{"role": "user", "content": MARKER}]})
            plain = await env.client.post(path, json=marked, headers=headers)
            assert plain.status_code == 200, (path, plain.text)
            assert MARKER in plain.text
            if path != "/api/ai/generate-prompt":
                streamed = await env.client.post(
                    path, json={**marked, "stream": True}, headers=headers
                )
                assert MARKER in streamed.text
        # Provider errors that echo the input reach the caller, never a log line.
        env.upstream.scenario = Scenario(status=400, error_message=f"bad input {MARKER}")
        echoed = await env.client.post(
            "/api/ai/chat",
            json={"messages": [{"role": "user", "content": MARKER}]},
            headers=headers,
        )
        assert MARKER in echoed.text
        env.upstream.scenario = Scenario(reply_text=f"a b c {MARKER} d e f", fail_mid_stream=True)
        await env.client.post(
            "/api/ai/chat",
            json={"messages": [{"role": "user", "content": MARKER}], "stream": True},
            headers=headers,
        )
        ctx: AppContext = env.app.state.ctx
        async with ctx.db.read() as conn:
            counted = (await conn.execute(ai_usage.select())).all()
        stored = await _database_text(env.app, backend)
    assert counted, "usage counts are recorded"
    assert MARKER.encode() not in stored
    out, err = capfd.readouterr()
    assert MARKER not in caplog.text
    assert MARKER not in out
    assert MARKER not in err
