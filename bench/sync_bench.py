"""Sync benchmark: push and pull through the whole app, against the bare driver as the floor.

Runs on SQLite and PostgreSQL (``bench.common.PG_URL``: ``PIA_BENCH_DATABASE_URL``,
``PIA_TEST_DATABASE_URL`` or the local default; a throwaway schema is created and dropped).
Requests go through the ASGI app in process (no sockets), so the figures are server work:
routing, auth, validation, the service and the database. The floor does the same database
work with aiosqlite / asyncpg directly: insert 500 rows; fetch 500 stored timestamps; select
200 changes by change time.

    .venv/bin/python bench/sync_bench.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import httpx
from sqlalchemy import insert, text

from bench.common import PG_URL, todo
from pia_server.app import create_app
from pia_server.auth.storage import users
from pia_server.auth.tokens import AccessTokens
from pia_server.core.config import Settings, load_settings
from pia_server.core.migrations import migrate
from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks
from pia_server.sync.storage import sync_records, sync_state

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
COLUMNS = (
    "user_id, entity_id, entity, payload, secret, entity_ts, changed_at, seq, deleted, "
    "deleted_at, size, encrypted"
)


def _push(todos: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "clientTimestamp": format_timestamp(now_ticks()),
        "lastSyncTimestamp": "0001-01-01T00:00:00",
        "deviceId": "bench",
        "isE2EEEncrypted": False,
        "todos": {"upserted": todos, "deleted": []},
    }


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(fn: Callable[[], Awaitable[Any]], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


class Bare:
    """The floor: the same statements on a bare driver connection."""

    def __init__(self, backend: str, conn: Any) -> None:
        self.backend = backend
        self.conn = conn

    def _sql(self, sql: str) -> str:
        if self.backend == "sqlite":
            return sql
        n = 0
        out = []
        for ch in sql:
            if ch == "?":
                n += 1
                out.append(f"${n}")
            else:
                out.append(ch)
        return "".join(out)

    async def insert(self, rows: list[tuple[Any, ...]]) -> None:
        sql = self._sql(f"INSERT INTO sync_records ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
        if self.backend == "sqlite":
            await self.conn.execute("BEGIN IMMEDIATE")
            await self.conn.executemany(sql, rows)
            await self.conn.commit()
        else:
            async with self.conn.transaction():
                await self.conn.executemany(sql, rows)

    async def timestamps(self, user_id: str, ids: list[str]) -> list[Any]:
        if self.backend == "postgresql":
            return list(
                await self.conn.fetch(
                    "SELECT entity, entity_id, entity_ts, changed_at, deleted FROM sync_records "
                    "WHERE user_id = $1 AND entity_id = ANY($2::varchar[])",
                    user_id,
                    ids,
                )
            )
        marks = ",".join("?" * len(ids))
        sql = self._sql(
            "SELECT entity, entity_id, entity_ts, changed_at, deleted FROM sync_records "
            f"WHERE user_id = ? AND entity_id IN ({marks})"
        )
        if self.backend == "sqlite":
            async with self.conn.execute(sql, (user_id, *ids)) as cur:
                return list(await cur.fetchall())
        return list(await self.conn.fetch(sql, user_id, *ids))

    async def changes(self, user_id: str, since: int, limit: int) -> list[Any]:
        sql = self._sql(
            "SELECT entity, entity_id, payload, secret, deleted, changed_at, seq FROM sync_records "
            "WHERE user_id = ? AND changed_at >= ? ORDER BY changed_at, seq LIMIT ?"
        )
        if self.backend == "sqlite":
            async with self.conn.execute(sql, (user_id, since, limit)) as cur:
                return list(await cur.fetchall())
        return list(await self.conn.fetch(sql, user_id, since, limit))


@asynccontextmanager
async def _environment(backend: str, root: Path) -> AsyncIterator[tuple[Settings, Bare]]:
    schema = f"pia_bench_{os.getpid()}"
    tree: dict[str, Any] = {
        "server": {"data_dir": str(root), "log_level": "error"},
        "auth": {"jwt_secret": "bench-" + "x" * 40},
        "sync": {"encryption_key": KEY},
        "rate_limits": {"enabled": False},
        "quota": {"max_records_per_type": 10**9, "max_total_bytes": 10**12},
    }
    pg_url = PG_URL
    if backend == "postgresql":
        tree["database"] = {"url": pg_url, "schema": schema, "pool_size": 5}
    else:
        tree["database"] = {"url": f"sqlite+aiosqlite:///{root / 'bench.db'}"}
    settings = load_settings(environ={}, overrides=tree)
    await migrate(settings)
    if backend == "sqlite":
        conn: Any = await aiosqlite.connect(root / "bench.db", isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
    else:
        dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        yield settings, Bare(backend, conn)
    finally:
        await conn.close()
        if backend == "postgresql":
            dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
            admin = await asyncpg.connect(dsn)
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()


async def _new_user(app: Any) -> tuple[str, dict[str, str]]:
    ctx = app.state.ctx
    user_id = str(uuid.uuid4())
    async with ctx.db.write() as conn:
        await conn.execute(
            insert(users).values(
                id=user_id,
                email=f"{user_id}@bench.local",
                email_normalized=f"{user_id}@bench.local",
                display_name="bench",
                provider="local",
                disabled=False,
                created_at=now_ticks(),
            )
        )
    token = ctx.domain("access_tokens", AccessTokens).issue(user_id)
    return user_id, {"Authorization": f"Bearer {token}"}


async def _seed(app: Any, user_id: str, count: int) -> list[str]:
    """``count`` stored todos, written in bulk as the service would have (old change times)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    base = now_ticks() - 86_400 * TICKS_PER_SECOND
    rows = []
    for i, record_id in enumerate(ids):
        payload = json.dumps(todo(record_id, base), separators=(",", ":"))
        rows.append(
            {
                "user_id": user_id,
                "entity_id": record_id,
                "entity": "todos",
                "payload": payload,
                "secret": None,
                "entity_ts": base,
                "changed_at": base + i,
                "seq": i + 1,
                "deleted": False,
                "deleted_at": None,
                "size": len(payload),
                "encrypted": False,
            }
        )
    async with app.state.ctx.db.write() as conn:
        for start in range(0, count, 5000):
            await conn.execute(insert(sync_records), rows[start : start + 5000])
        await conn.execute(
            insert(sync_state).values(
                user_id=user_id,
                last_seq=count,
                last_changed_at=base + count,
                last_push_at=None,
                last_pull_at=None,
            )
        )
        if app.state.ctx.db.is_sqlite:
            await conn.execute(text("ANALYZE"))
        else:
            await conn.execute(text("ANALYZE sync_records"))
    return ids


def _row(name: str, backend: str, metric: str, value: float, floor: float) -> dict[str, object]:
    return {
        "benchmark": name,
        "backend": backend,
        "metric": metric,
        "value": round(value, 3),
        "floor": round(floor, 3),
        "ratio": round(value / floor, 2) if floor else None,
    }


async def _bench_backend(backend: str, quick: bool) -> list[dict[str, object]]:
    runs = 5 if quick else 30
    sizes = (1_000, 10_000) if quick else (1_000, 100_000)
    out: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with _environment(backend, Path(tmp)) as (settings, bare):
            app = create_app(settings)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://bench"
                ) as client,
            ):
                user_id, headers = await _new_user(app)

                # 500 new records per push.
                bodies = [
                    _push([todo(str(uuid.uuid4()), now_ticks()) for _ in range(500)])
                    for _ in range(runs)
                ]
                it = iter(bodies)

                async def push_new() -> None:
                    r = await client.post("/api/sync/push", json=next(it), headers=headers)
                    assert r.status_code == 200, r.text

                app_push = await _timed(push_new, runs)
                floor_user, _ = await _new_user(app)
                floor_rows = iter(
                    [
                        [
                            (
                                floor_user,
                                str(uuid.uuid4()),
                                "todos",
                                json.dumps(todo("x", now_ticks())),
                                None,
                                1,
                                1,
                                0,
                                False,
                                None,
                                500,
                                False,
                            )
                            for _ in range(500)
                        ]
                        for _ in range(runs)
                    ]
                )
                seq = [0]

                async def bare_insert() -> None:
                    rows = next(floor_rows)
                    fixed = []
                    for r in rows:
                        seq[0] += 1
                        fixed.append((*r[:7], seq[0], *r[8:]))
                    await bare.insert(fixed)

                floor_push = await _timed(bare_insert, runs)
                name = "push 500 new records"
                out.append(
                    _row(
                        name,
                        backend,
                        "p50_ms",
                        statistics.median(app_push),
                        statistics.median(floor_push),
                    )
                )
                out.append(
                    _row(name, backend, "p95_ms", _pct(app_push, 0.95), _pct(floor_push, 0.95))
                )

                # The early client's 5-minute re-send: the same 500 records again.
                same = bodies[0]

                async def push_same() -> None:
                    r = await client.post("/api/sync/push", json=same, headers=headers)
                    assert r.status_code == 200, r.text
                    assert r.json()["upserted"] == 0, r.text

                app_same = await _timed(push_same, runs)
                same_ids = [t["id"] for t in same["todos"]["upserted"]]
                floor_same = await _timed(lambda: bare.timestamps(user_id, same_ids), runs)
                name = "repeated identical push (500)"
                out.append(
                    _row(
                        name,
                        backend,
                        "p50_ms",
                        statistics.median(app_same),
                        statistics.median(floor_same),
                    )
                )
                out.append(
                    _row(name, backend, "p95_ms", _pct(app_same, 0.95), _pct(floor_same, 0.95))
                )

                # 200 changes out of N records.
                for size in sizes:
                    pull_user, pull_headers = await _new_user(app)
                    ids = await _seed(app, pull_user, size)
                    since_ticks = now_ticks()
                    changed = [
                        todo(i, now_ticks(), title="changed") for i in ids[:: size // 200][:200]
                    ]
                    r = await client.post(
                        "/api/sync/push", json=_push(changed), headers=pull_headers
                    )
                    assert r.json()["upserted"] == 200, r.text
                    since = format_timestamp(since_ticks)

                    async def pull(
                        since: str = since, pull_headers: dict[str, str] = pull_headers
                    ) -> None:
                        r = await client.get(
                            "/api/sync/pull",
                            params={"since": since, "limit": 500},
                            headers=pull_headers,
                        )
                        assert len(r.json()["todos"]["upserted"]) == 200

                    app_pull = await _timed(pull, runs * 2)
                    floor_pull = await _timed(
                        lambda u=pull_user, s=since_ticks: bare.changes(u, s, 501), runs * 2
                    )
                    name = f"pull 200 changes of {size:,} records"
                    out.append(
                        _row(
                            name,
                            backend,
                            "p50_ms",
                            statistics.median(app_pull),
                            statistics.median(floor_pull),
                        )
                    )
                    out.append(
                        _row(name, backend, "p95_ms", _pct(app_pull, 0.95), _pct(floor_pull, 0.95))
                    )
    return out


async def run(quick: bool = False) -> list[dict[str, object]]:
    # PostgreSQL as for the other benchmarks: PIA_BENCH_DATABASE_URL, PIA_TEST_DATABASE_URL or
    # the local default (bench.common).
    backends = ["sqlite", "postgresql"]
    rows: list[dict[str, object]] = []
    for backend in backends:
        rows += await _bench_backend(backend, quick)
    return rows


def _print(rows: list[dict[str, object]]) -> None:
    head = f"{'benchmark':38} {'backend':10} {'metric':7} {'value':>9} {'floor':>9} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['benchmark']!s:38} {r['backend']!s:10} {r['metric']!s:7} "
            f"{r['value']!s:>9} {r['floor']!s:>9} {r['ratio']!s:>6}"
        )


if __name__ == "__main__":
    import logging

    import structlog

    # Request logs would drown the table.
    logging.disable(logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    _print(asyncio.run(run(quick="--quick" in sys.argv)))
