"""Fixtures of the AI proxy tests: one fake upstream per module, an app wired to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import TestUser, client_for, create_test_user, deep_merge, running_app
from support.fake_upstreams import RunningUpstream, start_fake_upstream

PROVIDER_KEY = "sk-live-SECRETKEY0123456789abcdef"
MAX_OUTPUT = 100


@pytest.fixture(scope="module")
def fake_server() -> Iterator[RunningUpstream]:
    with start_fake_upstream() as running:
        yield running


@pytest.fixture
def upstream(fake_server: RunningUpstream) -> RunningUpstream:
    fake_server.reset()
    return fake_server


def openai_provider(up: RunningUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": up.openai_base_url,
        "api_key": PROVIDER_KEY,
        "model": "gpt-test",
        "max_output_tokens": MAX_OUTPUT,
        "timeout_seconds": 5,
        **extra,
    }


def ai_section(up: RunningUpstream, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "default_provider": "main",
        "allow_anonymous": False,
        "providers": {"main": openai_provider(up)},
    }
    return deep_merge(base, extra)


@dataclass
class AiEnv:
    app: FastAPI
    client: httpx.AsyncClient
    user: TestUser
    upstream: RunningUpstream

    @property
    def headers(self) -> dict[str, str]:
        return self.user.headers


EnvFactory = Callable[..., Any]


@pytest.fixture
def ai_env(make_settings: Any, upstream: RunningUpstream) -> EnvFactory:
    """``async with ai_env(ai={...}, rate_limits={...}) as env:`` an app on the fake upstream."""

    @asynccontextmanager
    async def factory(
        ai: dict[str, Any] | None = None, **sections: dict[str, Any]
    ) -> AsyncIterator[AiEnv]:
        sections.setdefault("rate_limits", {"enabled": False})
        settings = make_settings(ai=ai if ai is not None else ai_section(upstream), **sections)
        async with running_app(settings) as app, client_for(app) as client:
            user = await create_test_user(app)
            yield AiEnv(app, client, user, upstream)

    return factory


def sse_data(text: str) -> list[Any]:
    """The JSON payloads of ``data:`` lines ("[DONE]" kept as a string)."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
