"""Every AI route against a local OpenAI-wire upstream on a loopback port."""

from __future__ import annotations

from typing import Any

from support.fake_upstreams import Scenario, ToolCall, Usage

from .conftest import MAX_OUTPUT, PROVIDER_KEY, EnvFactory, ai_section, sse_data

BUSINESS_EMAIL = "00000001-0000-0000-0000-000000000001"


async def test_status_reports_modes_without_secrets(ai_env: EnvFactory, upstream: Any) -> None:
    ai = ai_section(
        upstream,
        modes={"research": {"provider": "main", "model": "deep-model"}},
    )
    async with ai_env(ai=ai) as env:
        response = await env.client.get("/api/ai/status")
    assert response.status_code == 200
    body = response.json()
    assert body["available"] is True
    assert body["modes"]["optimize"] == {"provider": "main", "model": "gpt-test", "available": True}
    assert body["modes"]["research"]["model"] == "deep-model"
    assert PROVIDER_KEY not in response.text
    assert upstream.base_url not in response.text


async def test_unconfigured_proxy_is_503(ai_env: EnvFactory) -> None:
    async with ai_env(ai={}) as env:
        status = await env.client.get("/api/ai/status")
        optimize = await env.client.post(
            "/api/ai/optimize", json={"text": "hello"}, headers=env.headers
        )
        chat = await env.client.post(
            "/api/ai/chat/completions",
            json={"model": "pia-cloud", "messages": [{"role": "user", "content": "hi"}]},
            headers=env.headers,
        )
    assert status.status_code == 200
    assert status.json()["available"] is False
    assert optimize.status_code == 503
    assert optimize.json()["error"] == "ai_not_configured"
    assert chat.status_code == 503


async def test_mode_without_provider_is_503_even_when_others_work(
    ai_env: EnvFactory, upstream: Any
) -> None:
    ai = ai_section(upstream, default_provider="", modes={"optimize": {"provider": "main"}})
    async with ai_env(ai=ai) as env:
        ok = await env.client.post("/api/ai/optimize", json={"text": "x"}, headers=env.headers)
        chat = await env.client.post(
            "/api/ai/chat",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers=env.headers,
        )
    assert ok.status_code == 200
    assert chat.status_code == 503
    assert chat.json()["error"] == "ai_not_configured"


async def test_templates_are_the_clients_six(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        response = await env.client.get("/api/ai/templates")
    assert response.status_code == 200
    templates = response.json()
    assert [t["id"] for t in templates] == [
        f"00000001-0000-0000-0000-00000000000{i}" for i in range(1, 7)
    ]
    assert templates[0]["name"] == "Business Email"
    assert templates[0]["prompt"].startswith(
        "Transform this text into a professional business email."
    )
    assert set(templates[5]) == {"id", "name", "prompt", "description"}
    assert "Context \u2192 Requirements" in templates[5]["prompt"]


async def test_optimize_returns_optimized_text_and_result(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(
            reply_text="Dear team, hello.", usage=Usage(prompt_tokens=42, completion_tokens=7)
        )
        response = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hey team", "templateId": BUSINESS_EMAIL, "language": "DE"},
            headers={**env.headers, "X-Pia-Mode": "Optimize"},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "optimizedText": "Dear team, hello.",
        "result": "Dear team, hello.",
        "inputTokens": 42,
        "outputTokens": 7,
        "model": "gpt-test",
    }
    sent = env.upstream.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.api_key == PROVIDER_KEY
    assert sent.body["model"] == "gpt-test"
    assert sent.body["max_tokens"] == MAX_OUTPUT
    system, user = sent.body["messages"]
    assert system["role"] == "system"
    assert system["content"].startswith("Transform this text into a professional business email.")
    assert "German" in system["content"]
    assert user == {"role": "user", "content": "hey team"}


async def test_optimize_accepts_pascal_case_body_and_mode_in_any_case(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        for mode in ("optimize", "Optimize", "OPTIMIZE", "Assistant", "research"):
            response = await env.client.post(
                "/api/ai/optimize",
                json={"Text": "hello", "TemplateId": BUSINESS_EMAIL, "IsVoiceInput": True},
                headers={**env.headers, "X-Pia-Mode": mode},
            )
            assert response.status_code == 200, (mode, response.text)
        bad = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hello"},
            headers={**env.headers, "X-Pia-Mode": "Turbo"},
        )
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_mode"
    assert "dictated" in env.upstream.last_request.body["messages"][0]["content"]


async def test_optimize_sanitizes_input_before_upstream(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        dirty = "Cafe\u0301 ok\u200b\u202eevil\u202c\x00\x07 line\nnext\ttab\r\n"
        response = await env.client.post(
            "/api/ai/optimize", json={"text": dirty}, headers=env.headers
        )
        empty = await env.client.post(
            "/api/ai/optimize", json={"text": "\u200b\u202e\x01 "}, headers=env.headers
        )
    assert response.status_code == 200
    sent = env.upstream.requests[0].body["messages"][1]["content"]
    assert sent == "Caf\u00e9 okevil line\nnext\ttab\n"
    assert empty.status_code == 400
    assert len(env.upstream.requests) == 1


async def test_optimize_text_limit(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        at_limit = await env.client.post(
            "/api/ai/optimize", json={"text": "a" * 10_000}, headers=env.headers
        )
        over = await env.client.post(
            "/api/ai/optimize", json={"text": "a" * 10_001}, headers=env.headers
        )
        missing = await env.client.post("/api/ai/optimize", json={}, headers=env.headers)
        not_json = await env.client.post(
            "/api/ai/optimize",
            content=b"{nope",
            headers={**env.headers, "content-type": "application/json"},
        )
    assert at_limit.status_code == 200
    assert over.status_code == 400
    assert over.json()["error"] == "text_too_long"
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["field"] == "text"
    assert not_json.status_code == 400
    assert not_json.json()["error"] == "invalid_json"


async def test_optimize_template_choice(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        custom = await env.client.post(
            "/api/ai/optimize",
            json={
                "text": "hello",
                "templateId": "7d1f9a4e-0000-4000-8000-000000000000",
                "customPrompt": "Rewrite as a pirate.",
                "customTemplateName": "Pirate",
            },
            headers=env.headers,
        )
        system = env.upstream.last_request.body["messages"][0]["content"]
        unknown = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hello", "templateId": "7d1f9a4e-0000-4000-8000-000000000000"},
            headers=env.headers,
        )
        not_guid = await env.client.post(
            "/api/ai/optimize", json={"text": "hello", "templateId": "x"}, headers=env.headers
        )
        upper = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hello", "templateId": BUSINESS_EMAIL.upper()},
            headers=env.headers,
        )
    assert custom.status_code == 200
    assert system.startswith("Rewrite as a pirate.")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "unknown_template"
    assert not_guid.status_code == 400
    assert upper.status_code == 200


async def test_optimize_streams_deltas_then_the_whole_text(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(chunks=["Hel", "lo", " world"])
        response = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hi"},
            headers={**env.headers, "Accept": "text/event-stream"},
        )
        via_flag = await env.client.post(
            "/api/ai/optimize", json={"text": "hi", "stream": True}, headers=env.headers
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.text)
    assert [e["text"] for e in events if isinstance(e, dict) and e["type"] == "delta"] == [
        "Hel",
        "lo",
        " world",
    ]
    final = events[-2]
    assert final["type"] == "done"
    assert final["optimizedText"] == final["result"] == "Hello world"
    assert (final["inputTokens"], final["outputTokens"]) == (10, 5)
    assert events[-1] == "[DONE]"
    assert sse_data(via_flag.text)[-2]["optimizedText"] == "Hello world"


async def test_generate_prompt(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(reply_text="  Transform this text into haiku.  ")
        response = await env.client.post(
            "/api/ai/generate-prompt",
            json={"styleDescription": "short poems"},
            headers={**env.headers, "X-Pia-Mode": "Optimize"},
        )
        empty = await env.client.post(
            "/api/ai/generate-prompt", json={"styleDescription": ""}, headers=env.headers
        )
    assert response.status_code == 200
    assert response.json()["prompt"] == "Transform this text into haiku."
    assert env.upstream.requests[0].body["messages"][1]["content"] == "short poems"
    assert empty.status_code == 400


CHAT = {"model": "pia-cloud", "messages": [{"role": "user", "content": "hi"}]}


async def test_chat_completions_plain(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        response = await env.client.post(
            "/api/ai/chat/completions",
            json={**CHAT, "temperature": 0.2, "metadata": {"pia_persona_type": "plan"}},
            headers=env.headers,
        )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello from fake"
    assert body["usage"]["total_tokens"] == 15
    sent = env.upstream.last_request.body
    assert sent["model"] == "gpt-test"
    assert sent["temperature"] == 0.2
    assert "metadata" not in sent
    assert sent["stream"] is False


async def test_chat_completions_stream_with_and_without_usage(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        env.upstream.scenario = Scenario(chunks=["a", "b"])
        with_usage = await env.client.post(
            "/api/ai/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers=env.headers,
        )
        without = await env.client.post(
            "/api/ai/chat/completions", json={**CHAT, "stream": True}, headers=env.headers
        )
    events = sse_data(with_usage.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"]["completion_tokens"] == 5
    content = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
    )
    assert content == "ab"
    plain = sse_data(without.text)
    assert plain[-1] == "[DONE]"
    assert all("usage" not in e for e in plain[:-1])
    assert all(e["choices"] for e in plain[:-1])


async def test_chat_passes_tools_and_tool_calls(ai_env: EnvFactory) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with ai_env() as env:
        env.upstream.scenario = Scenario(
            tool_call=ToolCall(name="get_weather", arguments={"city": "Paris"}, id="call_x")
        )
        response = await env.client.post(
            "/api/ai/chat",
            json={"messages": CHAT["messages"], "tools": tools, "stream": False},
            headers={**env.headers, "X-Pia-Mode": "Assistant", "X-Pia-Persona": "not-a-guid"},
        )
        sent = env.upstream.last_request.body
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert sent["tools"] == tools


async def test_chat_rejects_unsupported_tools_with_400(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        for tools in ([{"type": "web_search"}], [{"type": "function"}], "nope"):
            response = await env.client.post(
                "/api/ai/chat/completions", json={**CHAT, "tools": tools}, headers=env.headers
            )
            assert response.status_code == 400, tools
            assert response.json()["error"] == "unsupported_tool"
        bad_messages = await env.client.post(
            "/api/ai/chat", json={"messages": []}, headers=env.headers
        )
    assert bad_messages.status_code == 400
    assert env.upstream.requests == []


async def test_chat_caps_max_tokens_at_the_provider_limit(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        await env.client.post(
            "/api/ai/chat", json={**CHAT, "max_tokens": 10_000}, headers=env.headers
        )
        capped = env.upstream.last_request.body
        await env.client.post(
            "/api/ai/chat", json={**CHAT, "max_completion_tokens": 7}, headers=env.headers
        )
        small = env.upstream.last_request.body
    assert capped["max_tokens"] == MAX_OUTPUT
    assert small["max_completion_tokens"] == 7
    assert "max_tokens" not in small


async def test_rate_limit_policies(ai_env: EnvFactory) -> None:
    limits = {"enabled": True, "ai": "2/minute", "global": "3/minute"}
    async with ai_env(rate_limits=limits) as env:
        ai_statuses = [
            (await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)).status_code
            for _ in range(3)
        ]
        global_statuses = [
            (await env.client.get("/api/ai/templates")).status_code for _ in range(4)
        ]
    assert ai_statuses == [200, 200, 429]
    assert global_statuses == [200, 200, 200, 429]
