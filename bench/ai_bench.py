"""The AI proxy's added latency: the same local fake upstream called directly and through us.

Two processes on loopback: the fake upstream (``tests/support/fake_upstreams.py``, no
recording, 20 streamed chunks) and ``pia-server serve`` (uvicorn) configured to use it. One
client sends requests one at a time (latency, not throughput) and measures:

- plain: a non-streaming chat completion, full response time;
- stream: a streaming chat completion, time to the first response byte of the body.

Each row's ``floor`` is the direct call and ``value`` the proxied one; the ``added_*`` rows are
the difference. Callers are anonymous (``Bearer anonymous``), so the figures include the budget
reservation and settlement (two small database writes) but no JWT check.

    python -m bench.ai_bench            # full
    python -m bench.ai_bench --quick    # well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, stop_process
from support.server_process import ServerProcess, free_port

PG_URL = os.environ.get("PIA_BENCH_DATABASE_URL", os.environ.get("PIA_TEST_DATABASE_URL", ""))
BODY = {"model": "pia-cloud", "messages": [{"role": "user", "content": "Say hello."}]}
DIRECT_BODY = {**BODY, "model": "gpt-bench"}


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


# The fake served by uvicorn binding the port itself (asyncio then sets TCP_NODELAY on each
# connection; on a pre-bound socket it does not, and Nagle plus delayed ACKs add ~40 ms), with
# the same loop and parser as pia-server, so the floor is a fast upstream.
_FAKE_SERVER = """
import sys, uvicorn
from support.fake_upstreams import FakeUpstream, Scenario
app = FakeUpstream(Scenario(chunks=[f"w{i} " for i in range(20)]), record_requests=False)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False, lifespan="off")
"""


class FakeUpstreamProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeUpstreamProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FAKE_SERVER, str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v1/models", timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("fake upstream did not start")

    def __exit__(self, *_exc: object) -> None:
        stop_process(self.process)


def _config(upstream_url: str, database_url: str, schema: str) -> str:
    database = f'[database]\nurl = "{database_url}"\nschema = "{schema}"\n' if database_url else ""
    return f"""{database}
[rate_limits]
enabled = false

[ai]
default_provider = "bench"
allow_anonymous = true
anonymous_tokens_per_hour = 1000000000000
anonymous_tokens_per_day = 1000000000000

[ai.providers.bench]
type = "openai-compatible"
base_url = "{upstream_url}/v1"
api_key = "sk-bench"
model = "gpt-bench"
max_output_tokens = 256
"""


async def _plain(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = await client.post(url, json=body)
    response.raise_for_status()
    return time.perf_counter() - started


async def _first_byte(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    async with client.stream("POST", url, json={**body, "stream": True}) as response:
        response.raise_for_status()
        elapsed = 0.0
        async for _chunk in response.aiter_raw():
            if not elapsed:
                elapsed = time.perf_counter() - started
        return elapsed


async def _measure(upstream: str, proxy: str, requests: int) -> dict[str, dict[str, list[float]]]:
    headers = {"Authorization": "Bearer anonymous"}
    out: dict[str, dict[str, list[float]]] = {}
    direct_url = f"{upstream}/v1/chat/completions"
    proxy_url = f"{proxy}/api/ai/chat/completions"
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        for name, probe in (("plain", _plain), ("stream_ttfb", _first_byte)):
            samples: dict[str, list[float]] = {"direct": [], "proxied": []}
            for _ in range(max(10, requests // 10)):  # warm-up: connections, caches
                await probe(client, direct_url, DIRECT_BODY)
                await probe(client, proxy_url, BODY)
            # Interleaved, so drift on a busy machine hits both sides alike.
            for _ in range(requests):
                samples["direct"].append(await probe(client, direct_url, DIRECT_BODY))
                samples["proxied"].append(await probe(client, proxy_url, BODY))
            out[name] = samples
    return out


def _rows(backend: str, results: dict[str, dict[str, list[float]]]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, samples in results.items():
        for label, pct in (("p50_ms", 50.0), ("p99_ms", 99.0)):
            direct = _percentile(samples["direct"], pct) * 1000
            proxied = _percentile(samples["proxied"], pct) * 1000
            rows.append(
                {
                    "benchmark": f"ai_proxy_{name}",
                    "backend": backend,
                    "metric": label,
                    "value": round(proxied, 3),
                    "floor": round(direct, 3),
                    "ratio": round(proxied / direct, 2) if direct else None,
                    "note": "floor = the fake upstream called directly",
                }
            )
            rows.append(
                {
                    "benchmark": f"ai_proxy_{name}",
                    "backend": backend,
                    "metric": f"added_{label}",
                    "value": round(proxied - direct, 3),
                    "note": f"{len(samples['proxied'])} sequential requests",
                }
            )
    return rows


async def _drop_schema(schema: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


async def run(quick: bool = False) -> list[dict[str, object]]:
    requests = 150 if quick else 1000
    backends = ["sqlite"] if quick or not PG_URL else ["sqlite", "postgresql"]
    rows: list[dict[str, object]] = []
    with FakeUpstreamProcess() as upstream, tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            schema = f"pia_bench_ai_{uuid.uuid4().hex[:8]}"
            database_url = PG_URL if backend == "postgresql" else ""
            data_dir = Path(tmp) / backend / "data"
            data_dir.mkdir(parents=True)
            server = ServerProcess(
                data_dir,
                env={"PIA_JWT_SECRET": "bench-" + "x" * 40, "PIA_LOG_LEVEL": "warning"},
                config_toml=_config(upstream.url, database_url, schema),
            )
            try:
                with server:
                    results = await _measure(upstream.url, server.url, requests)
            finally:
                if backend == "postgresql":
                    await _drop_schema(schema)
            rows.extend(_rows(backend, results))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(run(quick=args.quick))
    columns = ("benchmark", "backend", "metric", "value", "floor", "ratio")
    print(" | ".join(f"{c:>18}" for c in columns))
    for row in rows:
        print(" | ".join(f"{'' if row.get(c) is None else row.get(c)!s:>18}" for c in columns))
    for row in rows:
        if str(row["metric"]).startswith("added_"):
            print(
                f"{row['benchmark']} ({row['backend']}): proxy adds {row['value']} ms "
                f"at {str(row['metric'])[6:-3]}"
            )


if __name__ == "__main__":
    main()
