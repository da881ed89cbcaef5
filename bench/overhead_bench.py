"""Overhead: authenticated ``GET /api/sync/status`` on pia-server against a bare ASGI app.

Both are real processes on loopback, served by uvicorn with the same settings (uvloop, httptools,
one worker, no access log), on the same database file or PostgreSQL schema, with rate limits off.
The bare app (``bench/bare_status_app.py``) does the same work with no framework and the bare
driver: the same joserfc HS256 check, the same user lookup, the same five status queries in one
read transaction, the same JSON (checked byte for byte, ``serverTime`` aside, before measuring).

The user is seeded through ``POST /api/sync/push`` from two devices: 400 todos, 100 memories,
30 templates, 5 kanban columns, settings, then 20 todos deleted (tombstones). wrk drives each
server in turn (``ours``, ``bare``, repeated); the best run of each side counts (least disturbed
by other work on a shared machine). ``ratio`` is ours / bare requests per second: 1.0 is no
overhead at all, the target is at least 0.6.

    python -m bench.overhead_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import PG_URL, REDIS_URL, ROOT, LoadResult, load, stop_process, todo
from pia_server.auth.storage import users
from pia_server.auth.tokens import AccessTokens
from pia_server.core.config import load_settings
from pia_server.core.migrations import migrate
from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks
from support.server_process import ServerProcess, free_port

JWT_SECRET = "bench-" + "x" * 40
TOKEN_TTL = 86_400
STATUS = "/api/sync/status"


# --- what the overhead and capacity benchmarks share -------------------------------------------


def server_tree(database_url: str, schema: str = "", redis_prefix: str = "") -> dict[str, Any]:
    """pia-server settings for a benchmark: rate limits off, long-lived tokens, quiet logs."""
    tree: dict[str, Any] = {
        "server": {"log_level": "warning"},
        "database": {"url": database_url},
        "auth": {"jwt_secret": JWT_SECRET, "access_token_ttl_seconds": TOKEN_TTL},
        "rate_limits": {"enabled": False},
        "quota": {"max_records_per_type": 1_000_000, "max_total_bytes": 10**12},
        "sync": {"encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
    }
    if schema:
        tree["database"]["schema"] = schema
    if redis_prefix:
        tree["redis"] = {"url": REDIS_URL, "key_prefix": redis_prefix}
    return tree


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def to_toml(tree: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, values in tree.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


async def prepare_database(tree: dict[str, Any], user_count: int) -> list[tuple[str, str]]:
    """Migrate, then insert ``user_count`` users directly (no Argon2): ``(user_id, token)``."""
    settings = load_settings(environ={}, overrides=tree)
    await migrate(settings)
    tokens = AccessTokens(JWT_SECRET, ttl_seconds=TOKEN_TTL)
    created = now_ticks()
    rows = []
    out = []
    for _ in range(user_count):
        user_id = str(uuid.uuid4())
        rows.append(
            {
                "id": user_id,
                "email": f"{user_id}@bench.local",
                "email_normalized": f"{user_id}@bench.local",
                "display_name": "bench",
                "provider": "local",
                "password_hash": None,
                "disabled": False,
                "created_at": created,
            }
        )
        out.append((user_id, tokens.issue(user_id)))
    engine = create_async_engine(
        settings.database_url,
        connect_args={"server_settings": {"search_path": settings.database.schema_name}}
        if settings.database.schema_name
        else {},
    )
    try:
        async with engine.begin() as conn:
            for start in range(0, len(rows), 2000):
                await conn.execute(insert(users), rows[start : start + 2000])
    finally:
        await engine.dispose()
    return out


async def drop_schema(schema: str) -> None:
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


def start_server(root: Path, name: str, tree: dict[str, Any]) -> ServerProcess:
    data_dir = root / name
    data_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(data_dir, config_toml=to_toml(tree)).start()


def memory(record_id: str, updated: int) -> dict[str, Any]:
    stamp = format_timestamp(updated)
    return {
        "id": record_id,
        "type": "fact",
        "label": "Preferred tone",
        "data": '{"value":"short, friendly, no emoji"}',
        "createdAt": stamp,
        "updatedAt": stamp,
        "lastAccessedAt": stamp,
        "encryptedPayload": None,
        "wrappedDek": None,
    }


def template(record_id: str, updated: int) -> dict[str, Any]:
    return {
        "id": record_id,
        "name": "Polite e-mail",
        "prompt": "Rewrite the text as a short, polite e-mail. Keep the facts.",
        "description": "For work mail",
        "ExampleText": None,
        "createdAt": format_timestamp(updated),
        "modifiedAt": None,
        "encryptedPayload": None,
        "wrappedDek": None,
    }


def column(record_id: str, updated: int, order: int) -> dict[str, Any]:
    stamp = format_timestamp(updated)
    return {
        "id": record_id,
        "name": f"Column {order}",
        "sortOrder": order,
        "isDefaultView": order == 0,
        "isClosedColumn": False,
        "createdAt": stamp,
        "updatedAt": stamp,
        "encryptedPayload": None,
        "wrappedDek": None,
    }


def settings_record() -> dict[str, Any]:
    # The early client stamps its settings with "now" on every push.
    return {"theme": 1, "autoTypeDelayMs": 10, "modifiedAt": format_timestamp(now_ticks())}


def push_body(device_id: str, **collections: Any) -> bytes:
    body: dict[str, Any] = {
        "clientTimestamp": format_timestamp(now_ticks()),
        "lastSyncTimestamp": "0001-01-01T00:00:00",
        "deviceId": device_id,
        "isE2EEEncrypted": False,
        "settings": settings_record(),
    }
    for name in ("templates", "providers", "memories", "todos", "kanbanColumns"):
        upserted, deleted = collections.get(name, ([], []))
        body[name] = {"upserted": upserted, "deleted": deleted}
    body["sessions"] = {"added": [], "deleted": []}
    return json.dumps(body, separators=(",", ":")).encode()


# --- the overhead benchmark --------------------------------------------------------------------


async def seed_status_user(url: str, token: str) -> None:
    """A user with a realistic amount of data, pushed the way two desktop clients would."""
    base = now_ticks() - 86_400 * TICKS_PER_SECOND
    ids = {name: [str(uuid.uuid4()) for _ in range(n)] for name, n in _SEED_SIZES.items()}
    records: dict[str, list[dict[str, Any]]] = {
        "todos": [todo(i, base + k) for k, i in enumerate(ids["todos"])],
        "memories": [memory(i, base) for i in ids["memories"]],
        "templates": [template(i, base) for i in ids["templates"]],
        "kanbanColumns": [column(i, base, k) for k, i in enumerate(ids["kanbanColumns"])],
    }
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        for device in ("laptop-1", "desktop-1"):
            for name, items in records.items():
                for start in range(0, len(items), 150):
                    body = push_body(device, **{name: (items[start : start + 150], [])})
                    response = await client.post("/api/sync/push", content=body)
                    response.raise_for_status()
        body = push_body("laptop-1", todos=([], ids["todos"][:20]))
        (await client.post("/api/sync/push", content=body)).raise_for_status()


_SEED_SIZES = {"todos": 400, "memories": 100, "templates": 30, "kanbanColumns": 5}


class BareProcess:
    """``bench/bare_status_app.py`` under uvicorn, on a free loopback port."""

    def __init__(self, database_url: str, schema: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PIA_BARE_DATABASE_URL": database_url,
            "PIA_BARE_SCHEMA": schema,
            "PIA_BARE_JWT_SECRET": JWT_SECRET,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BareProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.bare_status_app", str(self.port)],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bare app exited: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/", timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("bare app did not start")

    def __exit__(self, *_exc: object) -> None:
        stop_process(self.process)


def _same_document(ours: httpx.Response, bare: httpx.Response) -> None:
    """The floor must build the same JSON (``serverTime`` differs by the clock only)."""
    if ours.status_code != 200 or bare.status_code != 200:
        raise RuntimeError(f"status: ours {ours.status_code} {ours.text}, bare {bare.status_code}")
    a, b = ours.json(), bare.json()
    a.pop("serverTime")
    b.pop("serverTime")
    if a != b or list(ours.json()) != list(bare.json()):
        raise RuntimeError(f"bare app disagrees with pia-server:\n{a}\n{b}")
    if a["totalRecords"] < 500 or len(a["devices"]) != 2:
        raise RuntimeError(f"seeding did not land: {a}")


@asynccontextmanager
async def _backend(backend: str, root: Path) -> AsyncIterator[tuple[str, str, str]]:
    """``(database_url, schema, token)`` with the schema dropped afterwards."""
    schema = ""
    if backend == "postgresql":
        schema = f"pia_bench_overhead_{uuid.uuid4().hex[:8]}"
        database_url = PG_URL
    else:
        database_url = f"sqlite+aiosqlite:///{root / 'overhead.db'}"
    try:
        [(_user_id, token)] = await prepare_database(server_tree(database_url, schema), 1)
        yield database_url, schema, token
    finally:
        if schema:
            await drop_schema(schema)


async def _measure(backend: str, quick: bool) -> list[dict[str, object]]:
    seconds = 3 if quick else 10
    rounds = 1 if quick else 3
    connections = 32
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with _backend(backend, root) as (database_url, schema, token):
            tree = server_tree(database_url, schema)
            server = start_server(root, "ours", tree)
            try:
                await seed_status_user(server.url, token)
                headers = {"Authorization": f"Bearer {token}"}
                with BareProcess(database_url, schema, root / "bare.log") as bare:
                    async with httpx.AsyncClient(headers=headers) as client:
                        _same_document(
                            await client.get(server.url + STATUS),
                            await client.get(bare.url + STATUS),
                        )
                    results: dict[str, list[LoadResult]] = {"ours": [], "bare": []}
                    targets = {"ours": server.url, "bare": bare.url}
                    for url in targets.values():  # warm-up: pools, caches
                        await asyncio.to_thread(load, url + STATUS, headers, 1, connections)
                    for _ in range(rounds):
                        for name, url in targets.items():
                            results[name].append(
                                await asyncio.to_thread(
                                    load, url + STATUS, headers, seconds, connections
                                )
                            )
            finally:
                server.stop()
    ours = max(results["ours"], key=lambda r: r.requests_per_second)
    floor = max(results["bare"], key=lambda r: r.requests_per_second)
    errors = sum(r.errors for side in results.values() for r in side)
    note = (
        f"{ours.tool}, {connections} connections, best of {rounds} x {seconds} s; "
        f"floor = bare ASGI app + joserfc + raw driver"
    )
    if ours.tool != "wrk":
        # The Python client tops out near what either server does: the ratio then says little.
        note += "; wrk not installed (apt-get install wrk): the load generator is the limit"
    if errors:
        note += f"; {errors} errors"
    load_avg = os.getloadavg()[0]
    return [
        {
            "benchmark": "overhead: GET /api/sync/status",
            "backend": backend,
            "metric": "req_per_s",
            "value": round(ours.requests_per_second, 1),
            "floor": round(floor.requests_per_second, 1),
            "ratio": round(ours.requests_per_second / floor.requests_per_second, 2),
            "note": note + " (ratio = ours / bare, target >= 0.6)",
        },
        {
            "benchmark": "overhead: GET /api/sync/status",
            "backend": backend,
            "metric": "p99_ms",
            "value": round(ours.p99_ms, 2),
            "floor": round(floor.p99_ms, 2),
            "ratio": round(ours.p99_ms / floor.p99_ms, 2) if floor.p99_ms else None,
            "note": f"load average {load_avg:.2f} at the end",
        },
    ]


async def run(quick: bool = False) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for backend in ("sqlite", "postgresql"):
        rows += await _measure(backend, quick)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(run(quick=args.quick))
    columns = ("benchmark", "backend", "metric", "value", "floor", "ratio", "note")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns))


if __name__ == "__main__":
    main()
