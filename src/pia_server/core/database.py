"""The database: one async SQLAlchemy engine for SQLite (embedded) or PostgreSQL (production).

Every use of a connection is a context-managed transaction (``read``/``write``) or a single
autocommit statement, so the pool's reset-on-return ROLLBACK would be a wasted round trip on
every checkout: it is switched off.

Tables are SQLAlchemy Core ``Table`` objects on the shared :data:`metadata`, defined by each
domain's ``storage`` module. All timestamps are integer .NET ticks (see ``core.wire``).

SQLite write transactions start with ``BEGIN IMMEDIATE`` so that two concurrent writers queue
on the busy timeout instead of failing when a read transaction tries to upgrade.

The reads behind every request (the user of a token, pulls, status) use :meth:`Database.hot_read`:
the same pool, but the driver connection only (``core.rawsql``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from pia_server.core.config import Settings
from pia_server.core.hotpool import HotPool
from pia_server.core.rawsql import RawConnection
from pia_server.core.sqlite_driver import one_hop_connector
from pia_server.core.waiting import acquire_within

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

_WRITE_OPTION = "pia_write"


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        return Path(url[len(prefix) :].split("?", 1)[0])
    return None


def build_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    db = settings.database
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        options: dict[str, Any] = {"connect_args": {"timeout": db.statement_timeout_seconds}}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            options = {"async_creator": one_hop_connector(str(path), db.statement_timeout_seconds)}
        engine = create_async_engine(
            url,
            echo=db.echo,
            pool_size=db.pool_size,
            max_overflow=db.max_overflow,
            pool_timeout=db.connect_timeout_seconds,
            pool_reset_on_return=None,
            **options,
        )
        _install_sqlite_hooks(engine)
        return engine
    server_settings = {
        "statement_timeout": str(int(db.statement_timeout_seconds * 1000)),
        "application_name": "pia-server",
    }
    if db.schema_name:
        server_settings["search_path"] = db.schema_name
    return create_async_engine(
        url,
        echo=db.echo,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        pool_timeout=db.connect_timeout_seconds,
        pool_reset_on_return=None,
        connect_args={
            "timeout": db.connect_timeout_seconds,
            "command_timeout": db.statement_timeout_seconds,
            "server_settings": server_settings,
        },
    )


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit transactions get in the way).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """The engine plus the two ways to use it: :meth:`read` and :meth:`write` transactions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = build_engine(settings)
        self.is_sqlite = settings.is_sqlite
        # SQLite has one writer at a time. Queueing writers here wakes the next one the moment
        # the previous commits; left to SQLite's busy handler they sleep and poll (1-100 ms),
        # which the capacity benchmark showed as the limit on concurrent pushes. The wait is
        # bounded like a pool checkout (core.waiting).
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._checkout_timeout = settings.database.connect_timeout_seconds
        # Up to half the pool serves hot reads; the rest stays for transactions.
        self._hot = HotPool(
            self.engine,
            size=max(1, (settings.database.pool_size + settings.database.max_overflow) // 2),
            timeout=self._checkout_timeout,
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: everything inside lands, or nothing does."""
        if self._write_lock is None:
            async with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        await acquire_within(self._write_lock, self._checkout_timeout, "the SQLite writer")
        try:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(**{_WRITE_OPTION: True})
                async with conn.begin():
                    yield conn
        finally:
            self._write_lock.release()

    @asynccontextmanager
    async def hot_read(self, *, snapshot: bool = False) -> AsyncIterator[RawConnection]:
        """A pooled connection for ``RawQuery`` reads, without SQLAlchemy's ``Connection``.

        Without ``snapshot`` each statement sees the latest committed data (autocommit reads):
        right for a single statement, or for reads whose results stay valid when a push lands
        between them (a user's change times and sequences only grow). With ``snapshot`` all the
        statements see one committed state.
        """
        raw = await self._hot.acquire()
        try:
            if snapshot:
                await raw.execute(self._snapshot_begin)
                try:
                    yield raw
                except BaseException:
                    if not raw.invalidated:
                        await raw.execute("ROLLBACK")
                    raise
                await raw.execute("COMMIT")
            else:
                yield raw
        except BaseException as exc:
            # A connection left mid-statement or mid-transaction must not be used again.
            await self._hot.discard(raw)
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                await self._hot.discard_idle()
            raise
        self._hot.give_back(raw)

    @property
    def _snapshot_begin(self) -> str:
        # SQLite: a deferred read transaction. PostgreSQL's default READ COMMITTED takes a new
        # snapshot per statement; REPEATABLE READ keeps one for the transaction.
        if self.is_sqlite:
            return "BEGIN"
        return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self._hot.close()
        await self.engine.dispose()
