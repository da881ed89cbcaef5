"""Token budgets: reserve before the call, settle after, hold under parallel load."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from conftest import client_for, create_test_user
from pia_server.ai import storage
from pia_server.ai.budget import Caller, window_start
from pia_server.core.context import AppContext
from pia_server.core.wire import TICKS_PER_SECOND, now_ticks, parse_timestamp
from support.fake_upstreams import Scenario

from .conftest import MAX_OUTPUT, EnvFactory, ai_section

# "hi" is estimated at 1 token, so each chat request reserves 1 + MAX_OUTPUT tokens.
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
RESERVED = 1 + MAX_OUTPUT
USED = 15  # the fake's usage: 10 prompt + 5 completion


async def _hour_tokens(app: Any, caller: Caller) -> int:
    ctx: AppContext = app.state.ctx
    async with ctx.db.read() as conn:
        return await storage.used_tokens(
            conn, caller.subject, "hour", window_start("hour", now_ticks())
        )


async def test_over_budget_is_429_with_resets_at(ai_env: EnvFactory, upstream: Any) -> None:
    ai = ai_section(upstream, user_tokens_per_hour=MAX_OUTPUT)
    async with ai_env(ai=ai) as env:
        first = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        second = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        optimize = await env.client.post(
            "/api/ai/optimize", json={"text": "x"}, headers=env.headers
        )
    assert first.status_code == 200
    assert second.status_code == 429
    body = second.json()
    assert body["error"] == "token_limit"
    assert body["message"]
    assert body["resetsAt"].endswith("Z")
    resets = parse_timestamp(body["resetsAt"])
    assert resets == window_start("hour", now_ticks()) + 3600 * TICKS_PER_SECOND
    retry_after = int(second.headers["retry-after"])
    assert 1 <= retry_after <= 3600
    assert optimize.status_code == 429
    assert len(env.upstream.requests) == 1


async def test_daily_budget_resets_at_midnight(ai_env: EnvFactory, upstream: Any) -> None:
    ai = ai_section(upstream, user_tokens_per_day=MAX_OUTPUT, user_tokens_per_hour=0)
    async with ai_env(ai=ai) as env:
        await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        refused = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
    assert refused.status_code == 429
    assert refused.json()["resetsAt"].endswith("T00:00:00.0000000Z")


async def test_settles_with_real_usage_and_releases_on_failure(ai_env: EnvFactory) -> None:
    async with ai_env() as env:
        caller = Caller(env.user.id, "127.0.0.1")
        ok = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        after_ok = await _hour_tokens(env.app, caller)
        env.upstream.scenario = Scenario(status=500)
        failed = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        after_failure = await _hour_tokens(env.app, caller)
        env.upstream.scenario = Scenario(chunks=["a"] * 4)
        streamed = await env.client.post(
            "/api/ai/chat", json={**CHAT, "stream": True}, headers=env.headers
        )
        after_stream = await _hour_tokens(env.app, caller)
    assert ok.status_code == 200
    assert after_ok == USED
    assert failed.status_code == 502
    assert after_failure == USED
    assert streamed.status_code == 200
    assert after_stream == 2 * USED


async def test_budget_holds_under_20_parallel_requests(ai_env: EnvFactory, upstream: Any) -> None:
    allowed = 5
    ai = ai_section(upstream, user_tokens_per_hour=allowed * RESERVED)
    async with ai_env(ai=ai) as env:
        # Slow answers keep all 20 in flight together, so nothing settles before all reserved.
        env.upstream.scenario = Scenario(delay_seconds=2)
        responses = await asyncio.gather(
            *(env.client.post("/api/ai/chat", json=CHAT, headers=env.headers) for _ in range(20))
        )
        used = await _hour_tokens(env.app, Caller(env.user.id, "127.0.0.1"))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * allowed + [429] * (20 - allowed)
    assert len(env.upstream.requests) == allowed
    assert used == allowed * USED


async def test_budgets_are_per_user_and_per_anonymous_address(
    ai_env: EnvFactory, upstream: Any
) -> None:
    ai = ai_section(
        upstream,
        allow_anonymous=True,
        user_tokens_per_hour=MAX_OUTPUT,
        anonymous_tokens_per_hour=MAX_OUTPUT,
    )
    async with ai_env(ai=ai) as env:
        other = await create_test_user(env.app)
        a1 = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        a2 = await env.client.post("/api/ai/chat", json=CHAT, headers=env.headers)
        b1 = await env.client.post("/api/ai/chat", json=CHAT, headers=other.headers)
        anon_a = [(await env.client.post("/api/ai/chat", json=CHAT)).status_code for _ in range(2)]
        transport = httpx.ASGITransport(app=env.app, client=("10.9.8.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as far:
            anon_b = (await far.post("/api/ai/chat", json=CHAT)).status_code
        async with client_for(env.app) as again:
            bearer_anonymous = await again.post(
                "/api/ai/chat", json=CHAT, headers={"Authorization": "Bearer anonymous"}
            )
    assert (a1.status_code, a2.status_code, b1.status_code) == (200, 429, 200)
    assert anon_a == [200, 429]
    assert anon_b == 200
    # "Bearer anonymous" is the same anonymous caller (same address), already over budget.
    assert bearer_anonymous.status_code == 429
