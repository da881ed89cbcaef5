"""Overload: a push that cannot get its turn in time is told to come back, not queued forever."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from conftest import client_for, create_test_user, running_app
from sync.helpers import ids, pull, push, push_body, todo

CHECKOUT_TIMEOUT = 0.5


async def test_a_push_waiting_past_the_checkout_timeout_is_a_503_and_writes_nothing(
    make_settings: Any, backend: str
) -> None:
    # Two connections in all: taking both (PostgreSQL), or the one SQLite writer, leaves a
    # push nothing to run on.
    settings = make_settings(
        database={
            "pool_size": 2,
            "max_overflow": 0,
            "connect_timeout_seconds": CHECKOUT_TIMEOUT,
        }
    )
    async with running_app(settings) as app, client_for(app) as client:
        user = await create_test_user(app)
        db = app.state.ctx.db
        held = 1 if backend == "sqlite" else 2
        release = asyncio.Event()
        holding = asyncio.Barrier(held + 1)

        async def hold_a_write() -> None:
            async with db.write():
                await holding.wait()
                await release.wait()

        writers = [asyncio.create_task(hold_a_write()) for _ in range(held)]
        await holding.wait()
        body = push_body(todos=[todo()])
        try:
            started = time.monotonic()
            response = await asyncio.wait_for(
                client.post("/api/sync/push", json=body, headers=user.headers),
                CHECKOUT_TIMEOUT + 5,
            )
            elapsed = time.monotonic() - started
        finally:
            release.set()
            await asyncio.gather(*writers)

        assert response.status_code == 503, response.text
        assert response.json()["error"] == "database_unavailable"
        assert response.headers["Retry-After"].isdigit()
        assert CHECKOUT_TIMEOUT * 0.8 <= elapsed < CHECKOUT_TIMEOUT + 3
        assert ids(await pull(client, user.headers), "todos") == set()

        # The client's retry lands.
        await push(client, user.headers, body)
        assert ids(await pull(client, user.headers), "todos") == {
            body["todos"]["upserted"][0]["id"]
        }


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_writers_that_gave_up_leave_the_sqlite_queue_in_working_order(
    make_settings: Any,
) -> None:
    settings = make_settings(database={"connect_timeout_seconds": 0.2})
    async with running_app(settings) as app:
        db = app.state.ctx.db
        landed: list[int] = []
        holding, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with db.write():
                holding.set()
                await release.wait()
                landed.append(0)

        async def writer(index: int) -> None:
            async with db.write():
                landed.append(index)

        hold = asyncio.create_task(holder())
        await holding.wait()
        # Waiting behind a long write: these time out, and one more is cancelled (its client
        # went away) while in line.
        timed_out = await asyncio.wait_for(
            asyncio.gather(*(writer(i) for i in range(1, 4)), return_exceptions=True), 5
        )
        assert all(isinstance(r, PoolTimeoutError) for r in timed_out), timed_out
        cancelled = asyncio.create_task(writer(99))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        release.set()
        await hold
        await asyncio.gather(cancelled, return_exceptions=True)
        # The line is free again at once.
        await asyncio.wait_for(writer(4), timeout=1)
        assert landed == [0, 4]
