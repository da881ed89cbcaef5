"""Sanity tests for the fake upstream LLM servers (they must behave like the real wires)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from .fake_upstreams import RunningUpstream, Scenario, ToolCall, Usage, start_fake_upstream

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
WEATHER = ToolCall(name="get_weather", arguments={"city": "Paris", "unit": "celsius"})


@pytest.fixture(scope="module")
def server() -> Iterator[RunningUpstream]:
    with start_fake_upstream() as running:
        yield running


@pytest.fixture
def up(server: RunningUpstream) -> RunningUpstream:
    # One server per module keeps the suite fast; each test starts from a clean slate.
    server.reset()
    return server


def openai_client(up: RunningUpstream, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=up.openai_base_url, api_key="sk-test", **kwargs)


def parse_anthropic_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        payload = json.loads(lines["data"])
        assert payload["type"] == lines["event"]
        events.append((lines["event"], payload))
    return events


def test_openai_sdk_non_stream(up: RunningUpstream) -> None:
    up.scenario.usage = Usage(prompt_tokens=7, completion_tokens=3)
    result = openai_client(up).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert result.object == "chat.completion"
    assert result.model == "gpt-4o-mini"
    assert result.choices[0].message.content == "Hello from fake"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (7, 3)
    assert result.usage.total_tokens == 10
    sent = up.last_request
    assert sent.api == "openai"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.api_key == "sk-test"
    assert sent.body["messages"] == MESSAGES


def test_openai_sdk_stream_with_usage(up: RunningUpstream) -> None:
    up.scenario.chunks = ["Hel", "lo", " world"]
    stream = openai_client(up).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 15
    assert up.last_request.stream


def test_openai_stream_without_usage_and_done_marker(up: RunningUpstream) -> None:
    response = httpx.post(
        f"{up.openai_base_url}/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True},
        headers={"authorization": "Bearer k"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert all("usage" not in p for p in payloads)


def test_tool_call_round_trip(up: RunningUpstream) -> None:
    up.scenario.tool_call = WEATHER
    client = openai_client(up)
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]

    result = client.chat.completions.create(model="m", messages=MESSAGES, tools=tools)
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "call_1"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER.arguments
    assert up.last_request.body["tools"] == tools

    # Streaming: arguments arrive as several deltas that must be concatenated.
    pieces: list[str] = []
    names: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(
        model="m", messages=MESSAGES, tools=tools, stream=True
    ):
        delta = chunk.choices[0].delta
        for tool_delta in delta.tool_calls or []:
            assert tool_delta.index == 0
            if tool_delta.function and tool_delta.function.name:
                names.append(tool_delta.function.name)
            if tool_delta.function and tool_delta.function.arguments:
                pieces.append(tool_delta.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == WEATHER.arguments
    assert finish == "tool_calls"


def test_rate_limit_429_with_retry_after(up: RunningUpstream) -> None:
    up.scenario.status = 429
    up.scenario.retry_after = 7
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client(up).chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert len(up.requests) == 1  # max_retries=0: no hidden retries


def test_custom_400_error_body(up: RunningUpstream) -> None:
    up.scenario.status = 400
    up.scenario.error_body = {
        "error": {"message": "context too long", "type": "invalid_request_error", "code": None}
    }
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(up).chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 400
    assert "context too long" in caught.value.message


def test_fail_times_then_success(up: RunningUpstream) -> None:
    up.scenario.fail_times = 1
    url = f"{up.openai_base_url}/chat/completions"
    request = {"model": "m", "messages": MESSAGES}
    headers = {"authorization": "Bearer k"}
    first = httpx.post(url, json=request, headers=headers)
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    assert httpx.post(url, json=request, headers=headers).status_code == 200
    assert up.upstream.failures_served == 1

    # The SDK retries once by itself; retry-after-ms keeps its backoff short.
    up.scenario = Scenario(fail_times=1, fail_status=503, response_headers={"retry-after-ms": "1"})
    result = openai_client(up, max_retries=1).chat.completions.create(model="m", messages=MESSAGES)
    assert result.choices[0].message.content == "Hello from fake"
    assert len(up.requests) == 4


def test_missing_or_wrong_api_key_is_401(up: RunningUpstream) -> None:
    url = f"{up.openai_base_url}/chat/completions"
    response = httpx.post(url, json={"model": "m", "messages": MESSAGES})
    assert response.status_code == 401
    up.scenario.expected_api_key = "right"
    with pytest.raises(openai.AuthenticationError):
        openai_client(up).chat.completions.create(model="m", messages=MESSAGES)


def test_anthropic_non_stream(up: RunningUpstream) -> None:
    response = httpx.post(
        f"{up.base_url}/v1/messages",
        json={"model": "claude-x", "max_tokens": 64, "system": "be nice", "messages": MESSAGES},
        headers=ANTHROPIC_HEADERS,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-x"
    assert body["content"] == [{"type": "text", "text": "Hello from fake"}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] == 10
    assert body["usage"]["output_tokens"] == 5
    sent = up.last_request
    assert sent.api == "anthropic"
    assert sent.api_key == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "be nice"


def test_anthropic_stream(up: RunningUpstream) -> None:
    response = httpx.post(
        f"{up.base_url}/v1/messages",
        json={"model": "claude-x", "max_tokens": 64, "messages": MESSAGES, "stream": True},
        headers=ANTHROPIC_HEADERS,
    )
    events = parse_anthropic_sse(response.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[1] == "content_block_start"
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(
        p["delta"]["text"]
        for name, p in events
        if name == "content_block_delta" and p["delta"]["type"] == "text_delta"
    )
    assert text == "Hello from fake"
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"]["output_tokens"] == 5
    assert events[0][1]["message"]["usage"]["input_tokens"] == 10


def test_anthropic_tool_use(up: RunningUpstream) -> None:
    up.scenario.tool_call = WEATHER
    url = f"{up.base_url}/v1/messages"
    request = {"model": "claude-x", "max_tokens": 64, "messages": MESSAGES}
    body = httpx.post(url, json=request, headers=ANTHROPIC_HEADERS).json()
    assert body["stop_reason"] == "tool_use"
    assert body["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": WEATHER.arguments}
    ]

    streamed = httpx.post(url, json={**request, "stream": True}, headers=ANTHROPIC_HEADERS)
    events = parse_anthropic_sse(streamed.text)
    start = next(p for name, p in events if name == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "get_weather"
    partial = [
        p["delta"]["partial_json"]
        for name, p in events
        if name == "content_block_delta" and p["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads("".join(partial)) == WEATHER.arguments
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_error_shape(up: RunningUpstream) -> None:
    up.scenario.status = 529
    response = httpx.post(
        f"{up.base_url}/v1/messages",
        json={"model": "claude-x", "max_tokens": 64, "messages": MESSAGES},
        headers=ANTHROPIC_HEADERS,
    )
    assert response.status_code == 529
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Fake upstream error (HTTP 529)"},
    }
    missing_version = httpx.post(
        f"{up.base_url}/v1/messages",
        json={"model": "claude-x", "max_tokens": 64, "messages": MESSAGES},
        headers={"x-api-key": "k"},
    )
    assert missing_version.status_code == 400


def test_azure_path(up: RunningUpstream) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=up.base_url, api_key="azure-key", api_version="2024-10-21", max_retries=0
    )
    result = client.chat.completions.create(model="my-deploy", messages=MESSAGES)
    assert result.choices[0].message.content == "Hello from fake"
    sent = up.last_request
    assert sent.api == "azure"
    assert sent.deployment == "my-deploy"
    assert sent.api_version == "2024-10-21"
    assert sent.headers["api-key"] == "azure-key"
    assert sent.api_key == "azure-key"

    chunks = list(client.chat.completions.create(model="my-deploy", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from fake"
    )


def test_models_endpoint(up: RunningUpstream) -> None:
    models = openai_client(up).models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini", "claude-fake"]
    up.scenario.status = 500  # chat errors do not leak into health checks
    assert httpx.get(f"{up.openai_base_url}/models").status_code == 200
    up.scenario.models_status = 503
    assert httpx.get(f"{up.openai_base_url}/models").status_code == 503


def test_drop_connection(up: RunningUpstream) -> None:
    up.scenario.drop_connection = True
    request = {"model": "m", "messages": MESSAGES}
    url = f"{up.openai_base_url}/chat/completions"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=request, headers={"authorization": "Bearer k"})
    up.scenario.reset_on_drop = True
    with pytest.raises(httpx.ReadError):
        httpx.post(url, json=request, headers={"authorization": "Bearer k"})


def test_fail_mid_stream(up: RunningUpstream) -> None:
    up.scenario.fail_mid_stream = True
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012 - partial output matters
        for chunk in openai_client(up).chat.completions.create(
            model="m", messages=MESSAGES, stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received)  # some content arrived before the cut


def test_delay_times_out_and_records_disconnect(up: RunningUpstream) -> None:
    up.scenario.delay_seconds = 5
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{up.openai_base_url}/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"authorization": "Bearer k"},
            timeout=0.2,
        )
    assert up.wait_until(lambda fake: fake.last_request.client_disconnected, timeout=2)


def test_control_api(up: RunningUpstream) -> None:
    response = httpx.post(f"{up.base_url}/_fake/scenario", json={"reply_text": "remote"})
    assert response.status_code == 200
    assert up.scenario.reply_text == "remote"
    result = openai_client(up).chat.completions.create(model="m", messages=MESSAGES)
    assert result.choices[0].message.content == "remote"
    recorded = httpx.get(f"{up.base_url}/_fake/requests").json()
    assert recorded["count"] == 1
    assert httpx.post(f"{up.base_url}/_fake/scenario", json={"bogus": 1}).status_code == 400


def test_stop_is_prompt_with_requests_in_flight() -> None:
    running = start_fake_upstream(Scenario(delay_seconds=30))
    port = running.port
    errors: list[BaseException] = []

    def slow_client() -> None:
        try:
            httpx.post(
                f"{running.openai_base_url}/chat/completions",
                json={"model": "m", "messages": MESSAGES},
                headers={"authorization": "Bearer k"},
                timeout=10,
            )
        except httpx.TransportError as exc:
            errors.append(exc)

    client = threading.Thread(target=slow_client)
    client.start()
    running.wait_for_requests(1)
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 2
    assert not running.running
    client.join(5)
    assert errors  # the in-flight request was hung up on, like a dying upstream
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
