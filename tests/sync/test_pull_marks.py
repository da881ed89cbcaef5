"""Pull marks ("last pulled at"): a pull never waits for a write; its mark is batched, then kept."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from conftest import client_for, create_test_user, running_app
from pia_server.sync import storage
from pia_server.sync.service import SyncService
from sync.helpers import pull, push, push_body, todo


def _service(app: Any) -> SyncService:
    return app.state.ctx.domain("sync", SyncService)


async def _stored_mark(app: Any, user_id: str) -> int | None:
    async with app.state.ctx.db.read() as conn:
        row = (
            await conn.execute(
                select(storage.sync_state.c.last_pull_at).where(
                    storage.sync_state.c.user_id == user_id
                )
            )
        ).first()
    return None if row is None else row[0]


async def test_a_pull_does_not_wait_for_a_push_holding_the_users_row(make_settings: Any) -> None:
    async with running_app(make_settings()) as app, client_for(app) as client:
        user = await create_test_user(app)
        await push(client, user.headers, push_body(todos=[todo()]))
        holding, release = asyncio.Event(), asyncio.Event()

        async def slow_push() -> None:
            # A push in flight: the write transaction (SQLite's single writer) holding the
            # user's state row lock (PostgreSQL).
            async with app.state.ctx.db.write() as conn:
                await storage.lock_state(conn, user.id)
                holding.set()
                await release.wait()

        writer = asyncio.create_task(slow_push())
        await holding.wait()
        try:
            pulled = await asyncio.wait_for(pull(client, user.headers), timeout=3)
        finally:
            release.set()
            await writer
        assert len(pulled["todos"]["upserted"]) == 1
        # The mark is shown at once, and stored by the next flush.
        status = (await client.get("/api/sync/status", headers=user.headers)).json()
        assert status["lastPullAt"].endswith("Z")
        await _service(app).pull_marks.flush()
        assert await _stored_mark(app, user.id) is not None


async def test_marks_pending_at_shutdown_are_stored(make_settings: Any) -> None:
    settings = make_settings()
    async with running_app(settings) as app, client_for(app) as client:
        user = await create_test_user(app)
        await push(client, user.headers, push_body(todos=[todo()]))
        await pull(client, user.headers)
        pending = _service(app).pull_marks.pending(user.id)
        assert pending is not None
    async with running_app(settings) as app:
        assert await _stored_mark(app, user.id) == pending


async def test_an_older_mark_never_replaces_a_newer_one(make_settings: Any) -> None:
    async with running_app(make_settings()) as app, client_for(app) as client:
        user = await create_test_user(app)
        await push(client, user.headers, push_body(todos=[todo()]))
        marks = _service(app).pull_marks
        marks.note(user.id, 2_000)
        await marks.flush()
        marks.note(user.id, 1_000)  # e.g. another instance's late flush
        await marks.flush()
        assert await _stored_mark(app, user.id) == 2_000
