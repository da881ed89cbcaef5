"""The connections that serve hot reads (``Database.hot_read``), kept checked out between uses.

Taking an idle connection from this list costs nothing; a checkout from SQLAlchemy's pool and
the check-in after it cost two greenlet switches, about a tenth of ``GET /api/sync/status``.

The connections come from the engine's pool and count against it, up to ``size`` of them; the
rest of the pool stays for transactions. Callers beyond ``size`` wait their turn in arrival
order (an ``asyncio.Semaphore`` is first come, first served), for at most ``timeout`` seconds
(``core.waiting``).
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from pia_server.core.rawsql import RawConnection
from pia_server.core.waiting import acquire_within


class HotPool:
    def __init__(self, engine: AsyncEngine, size: int, timeout: float) -> None:
        self.engine = engine
        self.size = size
        self.timeout = timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[RawConnection] = []

    async def acquire(self) -> RawConnection:
        await acquire_within(self._slots, self.timeout, "a hot-read connection")
        try:
            if self._idle:
                return self._idle.pop()
            pooled = await self.engine.raw_connection()
            return RawConnection(pooled, self.engine.dialect)
        except BaseException:
            self._slots.release()
            raise

    def give_back(self, raw: RawConnection) -> None:
        """Return a connection in good order (no transaction open)."""
        self._idle.append(raw)
        self._slots.release()

    async def discard(self, raw: RawConnection) -> None:
        """Close a connection that failed or was interrupted; the pool opens a new one later."""
        try:
            await raw.invalidate()
            await raw.release()
        finally:
            self._slots.release()

    async def discard_idle(self) -> None:
        """After a lost connection: the idle ones went with the same database."""
        while self._idle:
            raw = self._idle.pop()
            await raw.invalidate()
            await raw.release()

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().release()
