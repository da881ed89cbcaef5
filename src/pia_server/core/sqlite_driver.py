"""aiosqlite with one trip to its worker thread per statement.

SQLAlchemy's aiosqlite adapter runs a statement as four trips to the connection's thread
(create a cursor, execute, fetch the rows, close the cursor), each a queue hand-off, a thread
wake-up and an event-loop wake-up: about 50 us of CPU apiece, a third of a sync push on SQLite.
Here the cursor's ``execute`` does all four in the thread at once and keeps the rows; the
adapter's later ``fetchall`` and ``close`` are then free.

The connection is still an ``aiosqlite.Connection`` (SQLAlchemy's adapter uses it as such); only
``cursor()`` differs. It is handed to SQLAlchemy through ``create_async_engine(async_creator=)``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiosqlite

_Result = tuple[Any, int, int | None, list[Any]]


class OneHopCursor:
    """The part of ``aiosqlite.Cursor`` that SQLAlchemy's adapter uses."""

    arraysize = 1

    def __init__(self, connection: OneHopConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> OneHopCursor:
        result = await self._connection.run_in_thread(_execute, sql, parameters)
        self.description, self.rowcount, self.lastrowid, self._rows = result
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> OneHopCursor:
        result = await self._connection.run_in_thread(_executemany, sql, list(parameters))
        self.description, self.rowcount, self.lastrowid, self._rows = result
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def close(self) -> None:
        self._rows = []


def _execute(conn: sqlite3.Connection, sql: str, parameters: Sequence[Any] | None) -> _Result:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _executemany(conn: sqlite3.Connection, sql: str, parameters: list[Sequence[Any]]) -> _Result:
    cursor = conn.cursor()
    try:
        cursor.executemany(sql, parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid, []
    finally:
        cursor.close()


class OneHopConnection(aiosqlite.Connection):
    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    async def run_in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(sqlite3_connection, *args)`` on the connection's own thread."""
        # aiosqlite's own queue to its thread (untyped upstream).
        return await self._execute(function, self._conn, *args)  # type: ignore[no-untyped-call]


def one_hop_connector(path: str, timeout: float) -> Callable[[], Awaitable[OneHopConnection]]:
    """The ``async_creator`` for an SQLite file."""

    async def connect() -> OneHopConnection:
        connection = OneHopConnection(lambda: sqlite3.connect(path, timeout=timeout), 64)
        # As SQLAlchemy does for its own aiosqlite connections: a forgotten connection must not
        # keep the process alive at exit.
        connection._thread.daemon = True
        await connection
        return connection

    return connect
