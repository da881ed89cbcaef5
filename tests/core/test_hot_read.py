"""``Database.hot_read``: the driver-level reads behind every request, on both backends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from conftest import SettingsFactory
from pia_server.auth.storage import get_user, users
from pia_server.core.database import Database
from pia_server.core.rawsql import RawQuery
from pia_server.core.wire import now_ticks

_COUNT_USERS = RawQuery(select(func.count()).select_from(users))


@pytest.fixture
async def db(make_settings: SettingsFactory) -> AsyncIterator[Database]:
    database = Database(make_settings())
    yield database
    await database.dispose()


async def _add_user(db: Database) -> str:
    user_id = str(uuid.uuid4())
    async with db.write() as conn:
        await conn.execute(
            insert(users).values(
                id=user_id,
                email=f"{user_id}@example.com",
                email_normalized=f"{user_id}@example.com",
                display_name="Hot",
                provider="local",
                disabled=False,
                created_at=now_ticks(),
            )
        )
    return user_id


async def _count(conn: Any) -> int:
    return int((await _COUNT_USERS.all(conn))[0][0])


async def test_hot_read_sees_what_a_transaction_wrote(db: Database) -> None:
    user_id = await _add_user(db)
    async with db.hot_read() as conn:
        user = await get_user(conn, user_id)
        missing = await get_user(conn, str(uuid.uuid4()))
    assert user is not None
    assert (user.id, user.disabled) == (user_id, False)
    assert missing is None


async def test_snapshot_sees_one_state_and_plain_reads_see_the_latest(db: Database) -> None:
    await _add_user(db)
    async with db.hot_read(snapshot=True) as conn:
        before = await _count(conn)
        await _add_user(db)  # commits on another connection meanwhile
        assert await _count(conn) == before
    async with db.hot_read() as conn:
        before = await _count(conn)
        await _add_user(db)
        assert await _count(conn) == before + 1


async def _fail_inside_snapshot(db: Database) -> Any:
    async with db.hot_read(snapshot=True) as conn:
        await _count(conn)
        raise RuntimeError(conn.driver)


async def test_an_error_inside_discards_the_connection(db: Database) -> None:
    async with db.hot_read() as conn:
        first = conn.driver
    with pytest.raises(RuntimeError) as caught:
        await _fail_inside_snapshot(db)
    assert caught.value.args[0] is first  # the idle connection was reused
    # The interrupted connection is gone (it might still hold a transaction); reads go on.
    async with db.hot_read(snapshot=True) as conn:
        assert conn.driver is not first
        assert await _count(conn) >= 0


async def test_bad_sql_is_a_database_error_and_the_pool_recovers(db: Database) -> None:
    broken = RawQuery(select(text("no_such_column")).select_from(users))
    with pytest.raises(DBAPIError):
        async with db.hot_read(snapshot=True) as conn:
            await broken.all(conn)
    async with db.hot_read() as conn:
        assert await _count(conn) >= 0


async def test_callers_beyond_the_limit_wait_in_arrival_order_then_time_out(
    make_settings: SettingsFactory,
) -> None:
    # pool_size 2 + max_overflow 0: one connection serves hot reads.
    settings = make_settings(
        database={"pool_size": 2, "max_overflow": 0, "connect_timeout_seconds": 0.3}
    )
    db = Database(settings)
    try:
        order: list[int] = []
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with db.hot_read():
                holding.set()
                await release.wait()

        async def waiter(index: int) -> None:
            async with db.hot_read() as conn:
                order.append(index)
                await _count(conn)

        hold = asyncio.create_task(holder())
        await holding.wait()
        waiters = []
        for index in range(4):
            waiters.append(asyncio.create_task(waiter(index)))
            await asyncio.sleep(0.01)  # arrive one after another
        release.set()
        await asyncio.gather(hold, *waiters)
        assert order == [0, 1, 2, 3]

        # Nobody gives the connection back: the next caller gets the pool's timeout (a 503).
        release.clear()
        holding.clear()
        hold = asyncio.create_task(holder())
        await holding.wait()
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError):
            async with db.hot_read():
                pass
        assert 0.25 <= time.monotonic() - started < 2
        release.set()
        await hold
        # Transactions still have their share of the pool while hot reads are busy.
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await db.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_lost_postgresql_connection_fails_once_then_reads_heal(db: Database) -> None:
    # Two idle hot connections, both killed by the server (as a restart would).
    async with db.hot_read() as one, db.hot_read() as two:
        pids = [await one.driver.fetchval("SELECT pg_backend_pid()")]
        pids.append(await two.driver.fetchval("SELECT pg_backend_pid()"))
    async with db.write() as conn:
        for pid in pids:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(OperationalError) as caught:
        async with db.hot_read() as conn:
            await _count(conn)
    assert caught.value.connection_invalidated
    # The other idle one went with it: the very next read works on a fresh connection.
    async with db.hot_read() as conn:
        assert await _count(conn) >= 0
        assert await conn.driver.fetchval("SELECT pg_backend_pid()") not in pids
