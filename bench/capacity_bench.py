"""Capacity: how many simulated early desktop clients the server holds with p99 < 200 ms.

Each simulated client is its own user (inserted directly, token minted with the server's key)
and behaves like the early Windows client, sped up:

- on joining, the first-sync migration: one push of its 100 records (not measured);
- every 5 s a pull, ``GET /api/sync/pull?since=<its own clock>``: ``DateTime.UtcNow.ToString("O")``
  of its previous pull (7 fractional digits, ``Z``, not URL-escaped), as the client does;
- every 30 s a full-state push of the same 100 todos plus settings stamped "now" (as the early
  client does), of which 3 todos have a new ``updatedAt`` and the rest are unchanged.

Clients start staggered (random phase within each period). The ramp adds clients step by step
(100, 250, 500, 750, 1000, ...); a step waits one pull period for the newcomers, then measures
every request for the hold time. A step is held when p99 over all its requests is under 200 ms
and nothing failed (non-2xx, connection error or 10 s timeout); the ramp stops at the first
step that is not held. The figure is the largest held step.

The load is one asyncio process with a minimal HTTP/1.1 client on raw sockets (one connection
per client, reopened when idle for 4.5 s because uvicorn closes idle keep-alive connections after
5 s), so that the client is not what limits the result; its CPU share is reported per step.

Backends: SQLite with one instance; PostgreSQL + Redis with two instances, clients assigned
round-robin to the two URLs. Memory: the server's resident set (``VmRSS``) at idle, after the
ramp, and after two further identical runs at the held step (no growth between them expected).

    python -m bench.capacity_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import PG_URL, percentile, rss_mib, todo
from bench.overhead_bench import (
    drop_schema,
    prepare_database,
    server_tree,
    start_server,
)
from pia_server.core.heap import freeze_startup_objects
from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks
from support.server_process import ServerProcess

PULL_EVERY = 5.0
PUSH_EVERY = 30.0
RECORDS = 100
UPDATED_PER_PUSH = 3
P99_LIMIT_MS = 200.0
REQUEST_TIMEOUT = 10.0
# uvicorn closes a keep-alive connection idle for 5 s; reopen before that race.
IDLE_REOPEN = 4.5
# More concurrent first pushes only queue on SQLite's write lock.
JOIN_CONCURRENCY = 2


@dataclass(frozen=True)
class Plan:
    steps: tuple[int, ...]
    hold: float  # measured seconds per step
    memory_runs: int
    budget: float  # seconds per backend before the ramp stops early


FULL = Plan(
    steps=(100, 250, 500, 750, 1000, 1500, 2000, 3000, 4000),
    hold=20.0,
    memory_runs=2,
    budget=240.0,
)
QUICK = Plan(steps=(100, 250), hold=6.0, memory_runs=2, budget=60.0)


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection: the least a client can do per request."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def _open(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            fresh = self.writer is None or time.monotonic() - self.last_used > IDLE_REOPEN
            if fresh:
                await self._open()
            assert self.reader is not None
            assert self.writer is not None
            try:
                self.writer.write(data)
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                # A reused connection the server closed meanwhile: retry once on a new one,
                # as HTTP clients do for a request that got no response byte at all.
                self.close()
                if fresh or attempt:
                    raise
                continue
            status = int(head[9:12])
            length = 0
            lowered = head.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at >= 0:
                end = lowered.index(b"\r\n", at + 2)
                length = int(lowered[at + 17 : end])
            body = await self.reader.readexactly(length) if length else b""
            if b"\r\nconnection: close" in lowered:
                self.close()
            self.last_used = time.monotonic()
            return status, body
        raise HttpError("unreachable")


@dataclass
class Window:
    """Requests started between ``start`` and ``end`` count."""

    start: float = float("inf")
    end: float = float("inf")
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"pull": [], "push": []})
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, kind: str, started: float, elapsed: float, error: str | None) -> None:
        if not self.start <= started < self.end:
            return
        if error is None:
            self.latencies[kind].append(elapsed)
        else:
            self.errors[error] = self.errors.get(error, 0) + 1


class Client:
    def __init__(self, user_id: str, token: str, url: str, index: int) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = Connection(host, int(port))
        self.host = f"{host}:{port}".encode()
        self.auth = f"Bearer {token}".encode()
        self.device_id = f"bench-device-{index}"
        base = now_ticks() - 7 * 86_400 * TICKS_PER_SECOND
        self.todos = [todo(str(uuid.uuid4()), base + i) for i in range(RECORDS)]
        self.encoded = [json.dumps(t, separators=(",", ":")) for t in self.todos]
        self.last_sync = "0001-01-01T00:00:00"
        self.since = "0001-01-01T00:00:00.0000000"
        self.task: asyncio.Task[None] | None = None

    def _get(self, target: str) -> bytes:
        return (
            f"GET {target} HTTP/1.1\r\nHost: {self.host.decode()}\r\n"
            f"Authorization: {self.auth.decode()}\r\nAccept: application/json\r\n\r\n"
        ).encode()

    def _post(self, target: str, body: bytes) -> bytes:
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {self.host.decode()}\r\n"
            f"Authorization: {self.auth.decode()}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body

    def push_request(self, updated: int) -> bytes:
        """The full state: 100 todos (``updated`` of them changed now) and settings."""
        now = now_ticks()
        for i in random.sample(range(RECORDS), updated):
            self.todos[i]["updatedAt"] = format_timestamp(now)
            self.encoded[i] = json.dumps(self.todos[i], separators=(",", ":"))
        stamp = format_timestamp(now)
        empty = '{"upserted":[],"deleted":[]}'
        body = (
            f'{{"clientTimestamp":"{stamp}","lastSyncTimestamp":"{self.last_sync}",'
            f'"deviceId":"{self.device_id}","isE2EEEncrypted":false,'
            f'"settings":{{"theme":1,"autoTypeDelayMs":10,"modifiedAt":"{stamp}"}},'
            f'"templates":{empty},"providers":{empty},"memories":{empty},'
            f'"kanbanColumns":{empty},"sessions":{{"added":[],"deleted":[]}},'
            f'"todos":{{"upserted":[{",".join(self.encoded)}],"deleted":[]}}}}'
        ).encode()
        return self._post("/api/sync/push", body)

    async def join(self) -> None:
        """First-sync migration: everything, then the cursor is the client's clock."""
        status, body = await self.conn.request(self.push_request(0))
        if status != 200:
            raise HttpError(f"join push: {status} {body[:200]!r}")
        self.last_sync = format_timestamp(now_ticks())
        self.since = self.last_sync

    async def _one(self, kind: str, window: Window) -> None:
        if kind == "push":
            data = self.push_request(UPDATED_PER_PUSH)
        else:
            # ToString("O") of its own clock, sent as is (unescaped).
            data = self._get(f"/api/sync/pull?since={self.since}")
        started = time.monotonic()
        error: str | None = None
        try:
            status, _body = await asyncio.wait_for(self.conn.request(data), REQUEST_TIMEOUT)
            if status != 200:
                error = f"{kind} {status}"
        except TimeoutError:
            error = f"{kind} timeout"
            self.conn.close()
        except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
            error = f"{kind} {type(exc).__name__}"
            self.conn.close()
        window.record(kind, started, time.monotonic() - started, error)
        if kind == "pull":
            self.since = format_timestamp(now_ticks())
        else:
            self.last_sync = format_timestamp(now_ticks())

    async def run(self, state: LoadState) -> None:
        loop = asyncio.get_running_loop()
        next_pull = loop.time() + random.uniform(0, PULL_EVERY)
        next_push = loop.time() + random.uniform(0, PUSH_EVERY)
        while state.running:
            kind = "push" if next_push <= next_pull else "pull"
            at = next_push if kind == "push" else next_pull
            await asyncio.sleep(max(0.0, at - loop.time()))
            if not state.running:
                break
            await self._one(kind, state.window)
            if kind == "push":
                next_push += PUSH_EVERY
            else:
                next_pull += PULL_EVERY

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.conn.close()


@dataclass
class LoadState:
    running: bool = True
    window: Window = field(default_factory=Window)


@dataclass
class StepResult:
    clients: int
    requests: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    pull_p99_ms: float
    push_p99_ms: float
    errors: dict[str, int]
    client_cpu_pct: float
    server_cpu_pct: float
    load_avg: float
    rss_mib: list[float] = field(default_factory=list)  # each server's, after the step

    @property
    def held(self) -> bool:
        return not self.errors and self.p99_ms < P99_LIMIT_MS

    def line(self) -> str:
        return (
            f"{self.clients:>5} clients: {self.req_per_s:7.1f} req/s, p50 {self.p50_ms:6.1f} ms, "
            f"p99 {self.p99_ms:7.1f} ms (pull {self.pull_p99_ms:.1f}, push "
            f"{self.push_p99_ms:.1f}), errors {sum(self.errors.values())} {self.errors or ''}, "
            f"CPU client {self.client_cpu_pct:.0f}% server {self.server_cpu_pct:.0f}%, "
            f"load {self.load_avg:.2f}, RSS {'/'.join(f'{r:.0f}' for r in self.rss_mib)} MiB "
            f"-> {'held' if self.held else 'NOT held'}"
        )


class Ramp:
    def __init__(self, users: Sequence[tuple[str, str]], servers: Sequence[ServerProcess]) -> None:
        self.users = users
        self.urls = [s.url for s in servers]
        self.pids = [s.process.pid for s in servers if s.process is not None]
        self.clients: list[Client] = []
        self.state = LoadState()
        self.newcomers = False

    async def grow(self, count: int) -> None:
        """Join new clients (first push, bounded concurrency, not measured), then start them."""
        new = [
            Client(user_id, token, self.urls[i % len(self.urls)], i)
            for i, (user_id, token) in enumerate(
                self.users[len(self.clients) : count], start=len(self.clients)
            )
        ]
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def join(client: Client) -> None:
            async with gate:
                await client.join()

        await asyncio.gather(*(join(c) for c in new))
        for client in new:
            client.task = asyncio.create_task(client.run(self.state))
        self.clients += new
        self.newcomers = bool(new)
        # The clients' records live as long as the run: keep them out of this process's GC
        # passes (80 ms at 750 clients), which would be measured as server latency. The same
        # settings as the server's (pia_server.core.heap).
        freeze_startup_objects()

    async def measure(self, hold: float) -> StepResult:
        if self.newcomers:
            # One pull period first, so that every newcomer is in its rhythm.
            await asyncio.sleep(PULL_EVERY + 1)
            self.newcomers = False
        window = Window(start=time.monotonic())
        window.end = window.start + hold
        self.state.window = window
        cpu = time.process_time()
        server_cpu = sum(_cpu_seconds(pid) for pid in self.pids)
        await asyncio.sleep(hold)
        cpu = time.process_time() - cpu
        server_cpu = sum(_cpu_seconds(pid) for pid in self.pids) - server_cpu
        # Let the requests started inside the window finish.
        await asyncio.sleep(min(REQUEST_TIMEOUT, 2.0))
        everything = window.latencies["pull"] + window.latencies["push"]
        count = len(everything) + sum(window.errors.values())
        return StepResult(
            clients=len(self.clients),
            requests=count,
            req_per_s=count / hold,
            p50_ms=percentile(everything, 50) * 1000,
            p99_ms=percentile(everything, 99) * 1000,
            pull_p99_ms=percentile(window.latencies["pull"], 99) * 1000,
            push_p99_ms=percentile(window.latencies["push"], 99) * 1000,
            errors=dict(window.errors),
            client_cpu_pct=100 * cpu / hold,
            server_cpu_pct=100 * server_cpu / hold,
            load_avg=os.getloadavg()[0],
        )

    async def shrink(self, count: int) -> None:
        for client in self.clients[count:]:
            client.stop()
        self.clients = self.clients[:count]

    async def stop(self) -> None:
        self.state.running = False
        for client in self.clients:
            client.stop()
        await asyncio.gather(
            *(c.task for c in self.clients if c.task is not None), return_exceptions=True
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(servers: Sequence[ServerProcess]) -> list[float]:
    return [round(rss_mib(s.process.pid), 1) for s in servers if s.process is not None]


def _log(text: str) -> None:
    print(f"  [capacity] {text}", file=sys.stderr, flush=True)


async def _capacity(backend: str, plan: Plan) -> list[dict[str, object]]:
    started = time.monotonic()
    schema = redis_prefix = ""
    if backend == "postgresql":
        schema = f"pia_bench_capacity_{uuid.uuid4().hex[:8]}"
        redis_prefix = f"pia-bench-{uuid.uuid4().hex[:8]}"
        database_url = PG_URL
        instances = 2
    else:
        instances = 1
    servers: list[ServerProcess] = []
    steps: list[StepResult] = []
    memory: dict[str, list[float]] = {}
    stopped_by_budget = False
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if backend == "sqlite":
            database_url = f"sqlite+aiosqlite:///{root / 'capacity.db'}"
        tree = server_tree(database_url, schema, redis_prefix)
        try:
            users = await prepare_database(tree, max(plan.steps))
            for i in range(instances):
                servers.append(await asyncio.to_thread(start_server, root, f"s{i}", tree))
            await asyncio.sleep(1.0)
            memory["idle"] = _rss(servers)
            ramp = Ramp(users, servers)
            try:
                for count in plan.steps:
                    if time.monotonic() - started > plan.budget:
                        stopped_by_budget = True
                        break
                    joined = time.monotonic()
                    await ramp.grow(count)
                    joined = time.monotonic() - joined
                    result = await ramp.measure(plan.hold)
                    result.rss_mib = _rss(servers)
                    _log(f"{backend}: {result.line()} (newcomers joined in {joined:.0f} s)")
                    steps.append(result)
                    if not result.held:
                        break
                held = [s for s in steps if s.held]
                if held:
                    # Before the step that was not held: its queued requests raise the peak.
                    memory["at held step"] = held[-1].rss_mib
                memory["after ramp"] = _rss(servers)
                if held:
                    # Identical runs at the held step: memory must not keep growing.
                    if not steps[-1].held:
                        await ramp.shrink(held[-1].clients)
                        # Let what the failed step queued up finish (or time out) first.
                        await asyncio.sleep(REQUEST_TIMEOUT)
                    for run in range(plan.memory_runs):
                        result = await ramp.measure(plan.hold)
                        result.rss_mib = _rss(servers)
                        _log(f"{backend}: memory run {run + 1}: {result.line()}")
                        memory[f"after run {run + 1}"] = result.rss_mib
            finally:
                await ramp.stop()
        finally:
            for server in servers:
                await asyncio.to_thread(server.stop)
            if schema:
                await drop_schema(schema)
    return _rows(backend, instances, steps, memory, stopped_by_budget)


def _rows(
    backend: str,
    instances: int,
    steps: list[StepResult],
    memory: dict[str, list[float]],
    stopped_by_budget: bool,
) -> list[dict[str, object]]:
    name = "capacity: early clients"
    if instances > 1:
        name += f" ({instances} instances + Redis)"
    held = [s for s in steps if s.held]
    best = held[-1] if held else None
    failed = next((s for s in steps if not s.held), None)
    if failed is not None:
        why = f"{failed.clients} not held: p99 {failed.p99_ms:.0f} ms" + (
            f", {sum(failed.errors.values())} errors" if failed.errors else ""
        )
    else:
        why = "ramp ended before failing" + (" (time budget)" if stopped_by_budget else "")
    rows: list[dict[str, object]] = [
        {
            "benchmark": name,
            "backend": backend,
            "metric": "clients_held",
            "value": best.clients if best else 0,
            "note": f"p99 < {P99_LIMIT_MS:.0f} ms, no error; target >= 1000; {why}",
        }
    ]
    if best is not None:
        rows += [
            {
                "benchmark": name,
                "backend": backend,
                "metric": "p99_ms_at_held",
                "value": round(best.p99_ms, 1),
                "note": f"pull p99 {best.pull_p99_ms:.1f} ms, push p99 {best.push_p99_ms:.1f} ms",
            },
            {
                "benchmark": name,
                "backend": backend,
                "metric": "req_per_s_at_held",
                "value": round(best.req_per_s, 1),
                "note": (
                    f"load client CPU {best.client_cpu_pct:.0f}% of a core; "
                    f"load average {best.load_avg:.2f}"
                ),
            },
        ]
    idle = memory.get("idle", [])
    runs = [k for k in memory if k.startswith("after run")]
    for key, values in memory.items():
        rows.append(
            {
                "benchmark": f"memory: {name.split(': ', 1)[1]}",
                "backend": backend,
                "metric": f"rss_mib {key}",
                "value": max(values) if values else None,
                "note": "per instance: " + ", ".join(f"{v:.0f}" for v in values)
                if len(values) > 1
                else None,
            }
        )
    if len(runs) >= 2:
        growth = max(b - a for a, b in zip(memory[runs[-2]], memory[runs[-1]], strict=True))
        rows.append(
            {
                "benchmark": f"memory: {name.split(': ', 1)[1]}",
                "backend": backend,
                "metric": "rss_growth_mib last run",
                "value": round(growth, 1),
                "note": f"between two identical runs at {best.clients if best else 0} clients; "
                f"idle was {max(idle) if idle else float('nan'):.0f} MiB",
            }
        )
    return rows


async def run(quick: bool = False) -> list[dict[str, object]]:
    plan = QUICK if quick else FULL
    rows: list[dict[str, object]] = []
    for backend in ("sqlite", "postgresql"):
        rows += await _capacity(backend, plan)
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    columns = ("benchmark", "backend", "metric", "value", "note")
    for row in rows:
        print(" | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL

    async def go() -> list[dict[str, object]]:
        if args.only:
            return await _capacity(args.only, plan)
        return await run(quick=args.quick)

    _print(asyncio.run(go()))


if __name__ == "__main__":
    main()
