"""Each upstream failure maps to its status; provider keys never leak."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from support.fake_upstreams import Scenario

from .conftest import PROVIDER_KEY, EnvFactory, ai_section, openai_provider, sse_data

CHAT = {"model": "pia-cloud", "messages": [{"role": "user", "content": "hi"}]}


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def test_connection_refused_is_502(ai_env: EnvFactory, upstream: Any) -> None:
    port = _closed_port()
    ai = ai_section(upstream, providers={"main": {"base_url": f"http://127.0.0.1:{port}/v1"}})
    async with ai_env(ai=ai) as env:
        response = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"


async def test_dropped_connection_is_retried_once_then_502(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(drop_connection=True, reset_on_drop=True)
        response = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert len(env.upstream.requests) == 2


async def test_one_5xx_is_retried_and_succeeds(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(fail_times=1, fail_status=503)
        response = await env.client.post(
            "/api/ai/chat", json={**CHAT, "stream": True}, headers=env.headers
        )
    assert response.status_code == 200
    assert sse_data(response.text)[-1] == "[DONE]"
    assert len(env.upstream.requests) == 2


async def test_persistent_5xx_is_502_after_two_attempts(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(status=500)
        response = await env.client.post(
            "/api/ai/optimize", json={"text": "x"}, headers=env.headers
        )
    assert response.status_code == 502
    assert len(env.upstream.requests) == 2


async def test_timeout_is_504(ai_env: EnvFactory, upstream: Any) -> None:
    ai = ai_section(upstream, providers={"main": {"timeout_seconds": 0.3}})
    async with ai_env(ai=ai) as env:
        env.upstream.scenario = Scenario(delay_seconds=3)
        response = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    # A timeout is not retried (it would double the wait).
    assert len(env.upstream.requests) == 1


async def test_upstream_429_keeps_retry_after(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(status=429, retry_after=17)
        response = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "17"
    body = response.json()
    assert body["error"] == "upstream_rate_limited"
    assert body["resetsAt"].endswith("Z")
    assert len(env.upstream.requests) == 1


async def test_upstream_4xx_passes_status_and_message(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(status=400, error_message="context too long for model")
        response = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        env.upstream.scenario = Scenario(status=404, error_message="no such model")
        missing = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
    assert response.status_code == 400
    assert response.json()["message"] == "context too long for model"
    assert missing.status_code == 404
    assert missing.json()["message"] == "no such model"


async def test_failure_mid_stream_is_an_sse_error_then_a_clean_close(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(chunks=[f"w{i} " for i in range(10)], fail_mid_stream=True)
        response = await env.client.post(
            "/api/ai/chat/completions", json={**CHAT, "stream": True}, headers=env.headers
        )
        optimize = await env.client.post(
            "/api/ai/optimize",
            json={"text": "x"},
            headers={**env.headers, "Accept": "text/event-stream"},
        )
    assert response.status_code == 200
    assert "event: error" in response.text
    events = sse_data(response.text)
    assert events[-1]["error"]["code"] == "upstream_unavailable"
    assert "[DONE]" not in events
    assert any(e.get("choices") for e in events[:-1])
    final = sse_data(optimize.text)[-1]
    assert final["type"] == "error"
    # Never retried once the stream started: one request per call.
    assert len(env.upstream.requests) == 2


async def test_provider_key_never_reaches_caller_or_logs(
    ai_env: EnvFactory, upstream: Any, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ai_env() as env:
        env.upstream.scenario = Scenario(
            status=401, error_message=f"Incorrect API key provided: {PROVIDER_KEY}"
        )
        auth = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        env.upstream.scenario = Scenario(
            status=400,
            error_message=f"bad request for key {PROVIDER_KEY[:12]}***{PROVIDER_KEY[-4:]}",
        )
        echoed = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        env.upstream.scenario = Scenario(status=500)
        failed = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        status = await env.client.get("/api/ai/status")
    # Our 401 would tell the client its own session is bad: the provider's refusal is a 502.
    assert auth.status_code == 502
    assert auth.json()["error"] == "upstream_auth_failed"
    assert echoed.status_code == 400
    for response in (auth, echoed, failed, status):
        assert PROVIDER_KEY not in response.text
        assert PROVIDER_KEY[-4:] not in response.text
        assert PROVIDER_KEY[3:15] not in response.text
    out, err = capfd.readouterr()
    logs = caplog.text + out + err
    assert PROVIDER_KEY[3:15] not in logs
    assert "ai_upstream_error_status" in caplog.text


async def test_api_key_from_environment(
    ai_env: EnvFactory, upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIA_TEST_AI_KEY", "sk-from-env-123456")
    provider = openai_provider(upstream, api_key="", api_key_env="PIA_TEST_AI_KEY")
    async with ai_env(ai={"default_provider": "p", "providers": {"p": provider}}) as env:
        response = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
    assert response.status_code == 200
    assert env.upstream.last_request.api_key == "sk-from-env-123456"
