""" "Last pulled at" times, written in batches.

A pull is a read; the time it leaves in ``sync_state.last_pull_at`` is for the status page. Writing
it from the pull itself made one pull in twelve a write transaction, which on SQLite queues
behind every push in flight (the slowest pulls in the capacity benchmark). Marks are collected
here and written together about once a second, in one transaction; ``status`` reads the pending
ones too, so an instance shows its own pulls at once. A crash loses at most a second of marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars

import structlog

from pia_server.core.database import Database
from pia_server.sync import storage

log = structlog.get_logger("pia_server.sync")


class PullMarks:
    def __init__(self, db: Database, interval_seconds: float = 1.0) -> None:
        self.db = db
        self.interval = interval_seconds
        self._pending: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, user_id: str, when: int) -> None:
        self._pending[user_id] = max(when, self._pending.get(user_id, 0))
        if self._task is None or self._task.done():
            # A context of its own: not the request's (its request id would tag the flush's logs).
            self._task = asyncio.get_running_loop().create_task(
                self._flush_soon(), context=contextvars.Context()
            )

    def pending(self, user_id: str) -> int | None:
        return self._pending.get(user_id)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    async def flush(self) -> None:
        marks, self._pending = self._pending, {}
        if not marks:
            return
        try:
            async with self.db.write() as conn:
                await storage.mark_pulled(conn, marks)
        except Exception:
            # Informational only: keep the marks for the next try rather than fail anything.
            log.warning("pull_marks_not_written", users=len(marks), exc_info=True)
            for user_id, when in marks.items():
                self._pending[user_id] = max(when, self._pending.get(user_id, 0))

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
