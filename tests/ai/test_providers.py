"""Azure OpenAI and Anthropic shapes against their local fakes; the official OpenAI SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

from support.fake_upstreams import Scenario, ToolCall, Usage

from .conftest import PROVIDER_KEY, EnvFactory, sse_data

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def azure(up: Any) -> dict[str, Any]:
    provider = {
        "type": "azure-openai",
        "base_url": up.base_url,
        "api_key": PROVIDER_KEY,
        "deployment": "pia-gpt",
        "api_version": "2024-10-21",
        "max_output_tokens": 100,
    }
    return {"default_provider": "az", "providers": {"az": provider}}


def anthropic(up: Any) -> dict[str, Any]:
    provider = {
        "type": "anthropic",
        "base_url": up.base_url,
        "api_key": PROVIDER_KEY,
        "model": "claude-test",
        "max_output_tokens": 100,
    }
    return {"default_provider": "claude", "providers": {"claude": provider}}


async def test_azure_deployment_path_key_header_and_stream(
    ai_env: EnvFactory, upstream: Any
) -> None:
    async with ai_env(ai=azure(upstream)) as env:
        plain = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        sent = env.upstream.last_request
        env.upstream.scenario = Scenario(chunks=["x", "y"])
        streamed = await env.client.post(
            "/api/ai/chat", json={**CHAT, "stream": True}, headers=env.headers
        )
    assert plain.status_code == 200
    assert plain.json()["choices"][0]["message"]["content"] == "Hello from fake"
    assert sent.api == "azure"
    assert sent.path == "/openai/deployments/pia-gpt/chat/completions"
    assert sent.api_version == "2024-10-21"
    assert sent.headers["api-key"] == PROVIDER_KEY
    assert "authorization" not in sent.headers
    text = "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in sse_data(streamed.text)
        if isinstance(e, dict) and e["choices"]
    )
    assert text == "xy"


async def test_anthropic_translation_plain(ai_env: EnvFactory, upstream: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_9", "content": "cold"},
    ]
    async with ai_env(ai=anthropic(upstream)) as env:
        env.upstream.scenario = Scenario(
            reply_text="It is cold.", usage=Usage(prompt_tokens=30, completion_tokens=4)
        )
        response = await env.client.post(
            "/api/ai/chat",
            json={"messages": messages, "tools": [WEATHER_TOOL], "temperature": 0.5},
            headers=env.headers,
        )
        sent = env.upstream.last_request
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "It is cold."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == PROVIDER_KEY
    assert sent.headers["anthropic-version"]
    assert sent.body["system"] == "Be brief."
    assert sent.body["max_tokens"] == 100
    assert sent.body["temperature"] == 0.5
    assert sent.body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    roles = [m["role"] for m in sent.body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert sent.body["messages"][1]["content"][0] == {
        "type": "tool_use",
        "id": "toolu_9",
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    assert sent.body["messages"][2]["content"][0]["type"] == "tool_result"


async def test_anthropic_tool_call_and_stream(ai_env: EnvFactory, upstream: Any) -> None:
    async with ai_env(ai=anthropic(upstream)) as env:
        env.upstream.scenario = Scenario(
            tool_call=ToolCall(name="get_weather", arguments={"city": "Paris"}, arg_chunk_size=4)
        )
        plain = await env.client.post(
            "/api/ai/chat", json={**CHAT, "tools": [WEATHER_TOOL]}, headers=env.headers
        )
        streamed = await env.client.post(
            "/api/ai/chat/completions",
            json={
                **CHAT,
                "model": "pia-cloud",
                "tools": [WEATHER_TOOL],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers=env.headers,
        )
        env.upstream.scenario = Scenario(chunks=["Bon", "jour"])
        optimize = await env.client.post(
            "/api/ai/optimize",
            json={"text": "hello", "stream": True},
            headers=env.headers,
        )
    call = plain.json()["choices"][0]["message"]["tool_calls"][0]
    assert plain.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    events = [e for e in sse_data(streamed.text) if isinstance(e, dict)]
    arguments = "".join(
        tc["function"].get("arguments", "")
        for e in events
        if e["choices"]
        for tc in e["choices"][0]["delta"].get("tool_calls", [])
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "tool_calls"
    assert events[-1]["usage"]["prompt_tokens"] == 10
    assert sse_data(streamed.text)[-1] == "[DONE]"
    assert sse_data(optimize.text)[-2]["optimizedText"] == "Bonjour"


def _sdk(app: Any, key: str) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    return openai.AsyncOpenAI(
        base_url="http://testserver/api/ai", api_key=key, http_client=http, max_retries=0
    )


async def test_openai_sdk_plain_stream_and_tool_call(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        client = _sdk(env.app, env.user.token)
        env.upstream.scenario = Scenario(reply_text="Hi there")
        plain = await client.chat.completions.create(
            model="pia-cloud", messages=[{"role": "user", "content": "hi"}]
        )
        env.upstream.scenario = Scenario(chunks=["Str", "eam"])
        stream = await client.chat.completions.create(
            model="pia-cloud",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        env.upstream.scenario = Scenario(
            tool_call=ToolCall(name="get_weather", arguments={"city": "Rome"})
        )
        tooled = await client.chat.completions.create(
            model="pia-cloud",
            messages=[{"role": "user", "content": "weather in Rome?"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
        await client.close()
    assert plain.choices[0].message.content == "Hi there"
    assert "".join(pieces) == "Stream"
    assert usage is not None
    assert usage.total_tokens == 15
    calls = tooled.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Rome"}  # type: ignore[union-attr]


async def test_openai_sdk_anonymous_and_streamed_tool_call(
    ai_env: EnvFactory, upstream: Any
) -> None:
    from .conftest import ai_section

    async with ai_env(ai=ai_section(upstream, allow_anonymous=True)) as env:
        client = _sdk(env.app, "anonymous")
        env.upstream.scenario = Scenario(
            tool_call=ToolCall(name="get_weather", arguments={"city": "Rome"})
        )
        stream = await client.chat.completions.create(
            model="pia-cloud",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            stream=True,
        )
        arguments = ""
        async for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                if call.function and call.function.arguments:
                    arguments += call.function.arguments
        await client.close()
    assert json.loads(arguments) == {"city": "Rome"}
