"""The overhead floor: ``GET /api/sync/status`` as a bare ASGI 3 app, no framework, no SQLAlchemy.

It does the same work as pia-server's route: the same HS256 check with joserfc (the very
``AccessTokens.verify``: algorithm, ``iss``, ``aud``, ``sub``, ``exp`` with leeway, ``sub`` as a
UUID), the same user lookup (a disabled or missing user gets 401), the same five status queries
inside one read transaction, and the same JSON bytes (camelCase, ``...Z`` timestamps). The
database is reached through the bare driver: a small pool of aiosqlite connections, or an asyncpg
pool. It is served by uvicorn with pia-server's settings (uvloop, httptools, one worker, no access
log) so that the comparison isolates what the framework, the ORM layer and our code add.

    PIA_BARE_DATABASE_URL=sqlite+aiosqlite:////path/pia.db PIA_BARE_JWT_SECRET=... \\
        python -m bench.bare_status_app 8001

Environment: ``PIA_BARE_DATABASE_URL`` (the server's URL), ``PIA_BARE_SCHEMA`` (PostgreSQL
schema), ``PIA_BARE_JWT_SECRET``, ``PIA_BARE_CONFLICT_STRATEGY`` (echoed like the server does),
``PIA_BARE_POOL_SIZE`` (default 20: pia-server's ``pool_size`` + ``max_overflow``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiosqlite
import asyncpg

from pia_server.auth.tokens import AccessTokens, TokenError
from pia_server.core.wire import format_timestamp, now_ticks

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# The entity types in pia-server's order (``pia_server.sync.schemas.ENTITY_TYPES``).
ENTITIES = ("settings", "templates", "providers", "sessions", "memories", "todos", "kanbanColumns")

USER_SQL = "SELECT id, email, display_name, provider, disabled, created_at FROM users WHERE id = ?"
STATE_SQL = (
    "SELECT last_seq, last_changed_at, last_push_at, last_pull_at FROM sync_state WHERE user_id = ?"
)
USAGE_SQL = "SELECT entity, records, bytes FROM sync_usage WHERE user_id = ?"
TOMBSTONES_SQL = (
    "SELECT entity, count(*), coalesce(sum(size), 0) FROM sync_records "
    "WHERE user_id = ? AND deleted IS {true} GROUP BY entity"
)
DEVICES_SQL = (
    "SELECT device_id, first_seen_at, last_seen_at, pushes FROM sync_devices "
    "WHERE user_id = ? ORDER BY last_seen_at DESC"
)
E2EE_SQL = "SELECT enabled_at FROM e2ee_accounts WHERE user_id = ?"

JSON_TYPE = b"application/json; charset=utf-8"


def _pg(sql: str) -> str:
    """``?`` placeholders to asyncpg's ``$1`` (each statement here has one parameter)."""
    return sql.replace("?", "$1")


class StatusQueries:
    """The six statements of one status request, on one bare driver."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def fetch(self, user_id: str) -> tuple[Any, ...] | None:
        raise NotImplementedError


class SqliteQueries(StatusQueries):
    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.created = 0
        self.idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self.tombstones_sql = TOMBSTONES_SQL.format(true="1")

    async def start(self) -> None:
        self.idle.put_nowait(await self._connect())

    async def _connect(self) -> aiosqlite.Connection:
        self.created += 1
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        # The same pragmas as pia-server's engine.
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=10000",
        ):
            await conn.execute(pragma)
        return conn

    async def _acquire(self) -> aiosqlite.Connection:
        if self.idle.empty() and self.created < self.size:
            return await self._connect()
        return await self.idle.get()

    async def close(self) -> None:
        while not self.idle.empty():
            await self.idle.get_nowait().close()

    async def _all(self, conn: aiosqlite.Connection, sql: str, user_id: str) -> list[Any]:
        # One hop to aiosqlite's thread per statement (execute + fetchall).
        return list(await conn.execute_fetchall(sql, (user_id,)))

    async def fetch(self, user_id: str) -> tuple[Any, ...] | None:
        conn = await self._acquire()
        try:
            user = await self._all(conn, USER_SQL, user_id)
            if not user or user[0][4]:
                return None
            await conn.execute("BEGIN")
            try:
                state = await self._all(conn, STATE_SQL, user_id)
                usage = await self._all(conn, USAGE_SQL, user_id)
                tombstones = await self._all(conn, self.tombstones_sql, user_id)
                devices = await self._all(conn, DEVICES_SQL, user_id)
                e2ee = await self._all(conn, E2EE_SQL, user_id)
            finally:
                await conn.execute("COMMIT")
            return state, usage, tombstones, devices, e2ee
        finally:
            self.idle.put_nowait(conn)


class PostgresQueries(StatusQueries):
    def __init__(self, dsn: str, schema: str, size: int) -> None:
        self.dsn = dsn
        self.schema = schema
        self.size = size
        self.pool: asyncpg.Pool | None = None
        self.tombstones_sql = _pg(TOMBSTONES_SQL.format(true="true"))

    async def start(self) -> None:
        server_settings = {"application_name": "pia-bare-status"}
        if self.schema:
            server_settings["search_path"] = self.schema
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.size, server_settings=server_settings
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def fetch(self, user_id: str) -> tuple[Any, ...] | None:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            user = await conn.fetchrow(_pg(USER_SQL), user_id)
            if user is None or user[4]:
                return None
            async with conn.transaction(readonly=False):
                state = await conn.fetch(_pg(STATE_SQL), user_id)
                usage = await conn.fetch(_pg(USAGE_SQL), user_id)
                tombstones = await conn.fetch(self.tombstones_sql, user_id)
                devices = await conn.fetch(_pg(DEVICES_SQL), user_id)
                e2ee = await conn.fetch(_pg(E2EE_SQL), user_id)
            return state, usage, tombstones, devices, e2ee


def _time(ticks: int | None) -> str | None:
    return None if ticks is None else format_timestamp(ticks)


def status_json(rows: tuple[Any, ...], conflict_strategy: str) -> bytes:
    """The same document as pia-server's ``SyncStatusResponse`` (keys in the same order)."""
    state, usage, tombstones, devices, e2ee = rows
    used = {r[0]: (int(r[1]), int(r[2])) for r in usage}
    dead = {r[0]: (int(r[1]), int(r[2])) for r in tombstones}
    entities = {
        name: {
            "records": used.get(name, (0, 0))[0],
            "bytes": used.get(name, (0, 0))[1],
            "tombstones": dead.get(name, (0, 0))[0],
        }
        for name in ENTITIES
    }
    first = state[0] if state else None
    document = {
        "serverTime": format_timestamp(now_ticks()),
        "lastPushAt": _time(first[2]) if first else None,
        "lastPullAt": _time(first[3]) if first else None,
        "changeSequence": first[0] if first else 0,
        "entities": entities,
        "totalRecords": sum(e["records"] for e in entities.values()),
        "totalBytes": sum(e["bytes"] for e in entities.values()),
        "devices": [
            {
                "deviceId": d[0],
                "firstSeenAt": format_timestamp(d[1]),
                "lastSeenAt": format_timestamp(d[2]),
                "pushes": d[3],
            }
            for d in devices
        ],
        "conflictStrategy": conflict_strategy,
        "e2eeEnabled": bool(e2ee) and e2ee[0][0] is not None,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()


class BareStatusApp:
    def __init__(
        self, queries: StatusQueries, tokens: AccessTokens, conflict_strategy: str
    ) -> None:
        self.queries = queries
        self.tokens = tokens
        self.conflict_strategy = conflict_strategy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != "/api/sync/status" or scope["method"] != "GET":
            await self._respond(send, 404, _error("not_found", "Not found."))
            return
        token = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    token = b""
                break
        try:
            claims = self.tokens.verify(token.strip().decode("latin-1"))
        except TokenError as exc:
            await self._respond(send, 401, _error(exc.code, exc.message))
            return
        rows = await self.queries.fetch(claims.user_id)
        if rows is None:
            body = _error("invalid_token", "The access token is not valid.")
            await self._respond(send, 401, body)
            return
        await self._respond(send, 200, status_json(rows, self.conflict_strategy))

    async def _respond(self, send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON_TYPE),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.queries.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.queries.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def app_from_env(environ: MutableMapping[str, str]) -> BareStatusApp:
    url = environ["PIA_BARE_DATABASE_URL"]
    size = int(environ.get("PIA_BARE_POOL_SIZE", "20"))
    queries: StatusQueries
    if url.startswith("sqlite+aiosqlite:///"):
        queries = SqliteQueries(url.removeprefix("sqlite+aiosqlite:///"), size)
    else:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        queries = PostgresQueries(dsn, environ.get("PIA_BARE_SCHEMA", ""), size)
    tokens = AccessTokens(environ["PIA_BARE_JWT_SECRET"])
    return BareStatusApp(
        queries, tokens, environ.get("PIA_BARE_CONFLICT_STRATEGY", "last-write-wins")
    )


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    # pia-server's own uvicorn settings (``pia_server.cli.cmd_serve``).
    config = uvicorn.Config(
        app_from_env(os.environ),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
