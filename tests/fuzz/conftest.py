"""Fixtures of the bad-input suite: an app wired to a local fake AI upstream, rate limits off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import SettingsFactory, TestUser, create_test_user, running_app
from pia_server.core.config import Settings
from support.fake_upstreams import RunningUpstream, start_fake_upstream


@pytest.fixture(scope="module")
def fake_ai() -> Iterator[RunningUpstream]:
    with start_fake_upstream() as running:
        yield running


def ai_section(upstream: RunningUpstream) -> dict[str, Any]:
    return {
        "default_provider": "main",
        "providers": {
            "main": {
                "type": "openai",
                "base_url": upstream.openai_base_url,
                "api_key": "sk-fuzz-0123456789",
                "model": "gpt-fuzz",
                "max_output_tokens": 64,
                "timeout_seconds": 5,
            }
        },
    }


# Cheap Argon2: sign-in attempts hash a password on every try.
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 64, "argon2_parallelism": 1}


def fuzz_sections(upstream: RunningUpstream) -> dict[str, Any]:
    return {
        "ai": ai_section(upstream),
        "rate_limits": {"enabled": False},
        "auth": FAST_ARGON2,
        # Small caps so that the size tests stay fast.
        "server": {"max_body_bytes": 512 * 1024, "max_inflated_bytes": 1024 * 1024},
    }


@pytest.fixture
def fuzz_settings(make_settings: SettingsFactory, fake_ai: RunningUpstream) -> Settings:
    fake_ai.reset()
    return make_settings(**fuzz_sections(fake_ai))


@dataclass
class FuzzEnv:
    app: FastAPI
    client: httpx.AsyncClient
    user: TestUser
    other: TestUser
    settings: Settings


# "Never a hang": every in-process request must be answered within this time.
ANSWER_WITHIN_SECONDS = 20.0


class BoundedTransport(httpx.AsyncBaseTransport):
    """httpx's ASGI transport ignores timeouts; this one fails a request that hangs."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
            return await self.inner.handle_async_request(request)


@pytest.fixture
async def env(fuzz_settings: Settings) -> AsyncIterator[FuzzEnv]:
    async with (
        running_app(fuzz_settings) as app,
        httpx.AsyncClient(transport=BoundedTransport(app), base_url="http://testserver") as client,
    ):
        user = await create_test_user(app)
        other = await create_test_user(app)
        yield FuzzEnv(app, client, user, other, fuzz_settings)
