"""Token budgets per user and per anonymous address, per hour and per day.

The counters live in the database so that every instance shares them. A request reserves its
worst case (estimated input plus ``max_tokens``) with a conditional ``UPDATE ... WHERE tokens +
n <= limit`` (atomic on SQLite and PostgreSQL alike), and settles with the real usage after the
call, so parallel requests cannot overrun a budget. A limit of 0 means no limit.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.ai import storage
from pia_server.ai.errors import token_limit
from pia_server.core.config import AiSettings
from pia_server.core.database import Database
from pia_server.core.wire import TICKS_PER_DAY, TICKS_PER_SECOND, now_ticks

PERIOD_TICKS = {"hour": 3600 * TICKS_PER_SECOND, "day": TICKS_PER_DAY}
_CLEANUP_EVERY_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str | None
    ip: str

    @property
    def subject(self) -> str:
        if self.user_id:
            return f"user:{self.user_id}"
        # Only a digest of the address is kept, and only for the life of the budget windows.
        return "ip:" + hashlib.sha256(self.ip.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Reservation:
    subject: str
    tokens: int
    # (period, window start, tokens reserved there)
    windows: tuple[tuple[str, int, int], ...]


def window_start(period: str, ticks: int) -> int:
    return ticks - ticks % PERIOD_TICKS[period]


class _RefusedError(Exception):
    def __init__(self, period: str, resets_at: int) -> None:
        self.period = period
        self.resets_at = resets_at


class Budgets:
    def __init__(self, settings: AiSettings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._last_cleanup = 0.0

    def limits(self, caller: Caller) -> dict[str, int]:
        s = self.settings
        if caller.user_id:
            return {"hour": s.user_tokens_per_hour, "day": s.user_tokens_per_day}
        return {"hour": s.anonymous_tokens_per_hour, "day": s.anonymous_tokens_per_day}

    async def reserve(self, caller: Caller, tokens: int) -> Reservation:
        """Reserve ``tokens`` in every window, or raise 429 ``token_limit``."""
        now = now_ticks()
        subject = caller.subject
        windows: list[tuple[str, int, int]] = []
        try:
            async with self.db.write() as conn:
                for period, limit in self.limits(caller).items():
                    if limit <= 0:
                        continue
                    start = window_start(period, now)
                    # One request larger than the whole budget may still run in an empty window.
                    amount = min(tokens, limit)
                    if not await storage.try_add_tokens(
                        conn, subject, period, start, amount, limit
                    ):
                        raise _RefusedError(period, start + PERIOD_TICKS[period])
                    windows.append((period, start, amount))
        except _RefusedError as refused:
            raise token_limit(refused.resets_at, refused.period) from None
        await self._maybe_cleanup(now)
        return Reservation(subject, tokens, tuple(windows))

    async def settle(self, conn: AsyncConnection, reservation: Reservation, used: int) -> None:
        """Replace the reservation by the real usage (0 releases it)."""
        for period, start, amount in reservation.windows:
            await storage.adjust_tokens(conn, reservation.subject, period, start, used - amount)

    async def _maybe_cleanup(self, now: int) -> None:
        clock = time.monotonic()
        if clock - self._last_cleanup < _CLEANUP_EVERY_SECONDS:
            return
        self._last_cleanup = clock
        async with self.db.write() as conn:
            await storage.delete_windows_before(conn, now - 2 * TICKS_PER_DAY)
