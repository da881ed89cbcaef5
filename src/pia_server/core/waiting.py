"""Waiting in line for a shared resource, with a deadline.

An unbounded queue turns a short overload into a lasting one: the capacity benchmark showed a
SQLite instance that, after a burst above what it could serve, kept answering pushes whose
clients had already given up, and never caught up with the load it had held before (with its
memory at 1 GB of queued requests). Past the deadline a caller gets the pool's own
``TimeoutError``, answered as 503 with ``Retry-After`` like any pool timeout, and the line stays
as long as the server can serve within that time.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import TimeoutError as PoolTimeoutError


async def acquire_within(
    primitive: asyncio.Lock | asyncio.Semaphore, seconds: float, what: str
) -> None:
    """Acquire ``primitive`` (first come, first served) or raise after ``seconds``."""
    if not primitive.locked():
        await primitive.acquire()
        return
    try:
        async with asyncio.timeout(seconds):
            await primitive.acquire()
    except TimeoutError:
        raise PoolTimeoutError(f"waited more than {seconds} s for {what}") from None
