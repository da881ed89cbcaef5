"""Hot reads on the bare driver connection underneath SQLAlchemy's pooled connection.

SQLAlchemy Core adds roughly 0.3 ms per statement on top of aiosqlite / asyncpg (the overhead
benchmark in ``bench/overhead_bench.py``, ``docs/benchmarks.md``). For the few reads that run on
every request (the user behind a token, pulls, ``GET /api/sync/status``) a Core statement is
compiled once per dialect and its SQL run on the driver connection, so the tables stay defined
in one place and pooling stays SQLAlchemy's.

A :class:`RawQuery` runs on either kind of connection: an ``AsyncConnection`` (inside a
``Database.read``/``write`` transaction) or a :class:`RawConnection` from ``Database.hot_read``,
a pooled connection checked out without SQLAlchemy's ``Connection`` around it (two greenlet
switches instead of six, no transaction bookkeeping).

Rows come back as the driver returns them: no result processing (SQLite booleans are 0/1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import Select
from sqlalchemy.util import greenlet_spawn


class RawConnection:
    """A pooled connection used through its driver only (see ``Database.hot_read``)."""

    def __init__(self, pooled: PoolProxiedConnection, dialect: Dialect) -> None:
        self.pooled = pooled
        self.dialect = dialect
        self.driver: Any = pooled.driver_connection
        self.invalidated = False

    async def execute(self, sql: str) -> None:
        """A statement without parameters or rows (``BEGIN``, ``COMMIT``)."""
        try:
            await self.driver.execute(sql)
        except Exception as exc:
            raise await _as_sqlalchemy_error(self, sql, [], exc) from exc

    async def invalidate(self) -> None:
        """Close the connection for good: the pool opens a fresh one in its place."""
        if not self.invalidated:
            self.invalidated = True
            await greenlet_spawn(self.pooled.invalidate)

    async def release(self) -> None:
        # Check-in may close an overflow connection, which awaits the driver: in a greenlet.
        await greenlet_spawn(self.pooled.close)


async def driver_connection(conn: AsyncConnection) -> Any:
    """The aiosqlite / asyncpg connection under ``conn``.

    Read straight off the checked-out connection when there is one: the public
    ``get_raw_connection()`` costs a greenlet round trip each time, a third of a bare query.
    """
    sync = conn.sync_connection
    if sync is not None and not sync.closed and not sync.invalidated:
        return sync.connection.driver_connection
    return (await conn.get_raw_connection()).driver_connection


# Where a RawQuery can run: inside a SQLAlchemy transaction or on a hot-read connection.
ReadConnection = AsyncConnection | RawConnection


class RawQuery:
    """A Core ``SELECT`` compiled once per dialect, run with named parameters on the driver."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        # dialect name -> (SQL, bound parameter names in order, their default values)
        self._compiled: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    def _compile(self, dialect: Dialect) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            # Both dialects here use positional parameters (qmark / numeric dollar).
            names = tuple(compiled.positiontup or ())
            found = (str(compiled), names, dict(compiled.params))
            self._compiled[dialect.name] = found
        return found

    async def all(self, conn: ReadConnection, **params: Any) -> list[Sequence[Any]]:
        sql, names, defaults = self._compile(conn.dialect)
        args = [params[name] if name in params else defaults[name] for name in names]
        if isinstance(conn, RawConnection):
            driver = conn.driver
        else:
            driver = await driver_connection(conn)
        try:
            if conn.dialect.name == "sqlite":
                # aiosqlite: execute and fetch in one hop to its worker thread.
                return list(await driver.execute_fetchall(sql, args))
            return list(await driver.fetch(sql, *args))
        except Exception as exc:
            raise await _as_sqlalchemy_error(conn, sql, args, exc) from exc


def _is_connection_lost(exc: BaseException) -> bool:
    # asyncpg's connection errors (ConnectionDoesNotExistError, InterfaceError, ...) and the
    # socket's own; on SQLite an OperationalError (locked, I/O) is the database's, not our SQL.
    name = type(exc).__name__
    return isinstance(exc, OSError | ConnectionError) or any(
        marker in name for marker in ("Connection", "InterfaceError", "OperationalError")
    )


async def _as_sqlalchemy_error(
    conn: ReadConnection, sql: str, args: list[Any], exc: Exception
) -> DBAPIError:
    """What SQLAlchemy would have raised: the shared error handlers then answer 503 or 400.

    Errors from the bare driver bypass SQLAlchemy's wrapping and its pool housekeeping, so a
    lost connection is invalidated here (the pool must not hand it out again).
    """
    if _is_connection_lost(exc):
        await conn.invalidate()
        return OperationalError(sql, args, exc, connection_invalidated=True)
    return DBAPIError(sql, args, exc)
