"""What the benchmarks share: load generation (wrk, or a Python fallback), percentiles, servers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The real-server harness of the end-to-end tests is the one the benchmarks use too.
sys.path.insert(0, str(ROOT / "tests"))

PG_URL = os.environ.get(
    "PIA_BENCH_DATABASE_URL",
    os.environ.get("PIA_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
)
REDIS_URL = os.environ.get(
    "PIA_BENCH_REDIS_URL", os.environ.get("PIA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
)


def todo(record_id: str, updated: int, title: str = "Buy milk") -> dict[str, Any]:
    """A todo as the early client pushes it (every key present, nulls written)."""
    from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp

    return {
        "id": record_id,
        "title": title,
        "notes": "Two litres, the organic one, and bread if they have it.",
        "priority": 1,
        "status": 0,
        "dueDate": None,
        "linkedReminderId": None,
        "createdAt": format_timestamp(updated - 3600 * TICKS_PER_SECOND),
        "completedAt": None,
        "updatedAt": format_timestamp(updated),
        "sortOrder": 3,
        "columnId": None,
        "encryptedPayload": None,
        "wrappedDek": None,
    }


def stop_process(process: subprocess.Popen[Any] | None) -> None:
    """Terminate a child server, and kill it if it does not exit within 10 s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p95_ms": percentile(samples, 95) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000 if samples else float("nan"),
    }


@dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str, headers: dict[str, str], seconds: int, connections: int, threads: int = 1
) -> LoadResult:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _wrk_ms(re.search(r"50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _wrk_ms(re.search(r"99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return LoadResult(rps, p50, p99, errors, "wrk")


async def _python_load(
    url: str, headers: dict[str, str], seconds: int, connections: int
) -> LoadResult:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.get(url, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 400:
                errors += 1

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(connections)))
    stats = summary_ms(latencies)
    return LoadResult(len(latencies) / seconds, stats["p50_ms"], stats["p99_ms"], errors, "httpx")


def load(url: str, headers: dict[str, str], seconds: int, connections: int) -> LoadResult:
    """wrk when installed (``apt-get install wrk``); a slower Python client otherwise."""
    if shutil.which("wrk"):
        return run_wrk(url, headers, seconds, connections)
    return asyncio.run(_python_load(url, headers, seconds, connections))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
