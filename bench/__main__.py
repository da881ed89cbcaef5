"""Run every benchmark module, print one table, and write ``docs/benchmarks.md``.

A benchmark module is ``bench/<name>_bench.py`` with ``async def run(quick: bool) -> list[dict]``;
each row has ``benchmark``, ``backend``, ``metric``, ``value`` and optionally ``floor`` (the same
work done with the bare driver or a bare ASGI app), ``ratio`` and ``note``.

    python -m bench                 # everything, full size
    python -m bench --quick         # smaller runs, for a first look
    python -m bench --only sync ai  # some modules
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("overhead", "sync", "ai", "capacity")


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = ("benchmark", "backend", "metric", "value", "floor", "ratio", "note")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return lines


async def _run(names: list[str], quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}_bench")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}_bench":
                print(f"(no benchmark module bench/{name}_bench.py)", file=sys.stderr)
                continue
            raise
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        result = await module.run(quick=quick)
        print(f"  {name} took {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows.extend(result)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--only", nargs="*", choices=MODULES, help="run only these")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    names = list(args.only or MODULES)
    rows = asyncio.run(_run(names, args.quick))
    table = _table(rows)
    print("\n".join(table))
    if not args.no_write:
        command = "python -m bench" + (" --quick" if args.quick else "")
        if args.only:
            command += " --only " + " ".join(args.only)
        text = [
            "# Benchmarks",
            "",
            f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {_machine()}.",
            f"Command: `{command}` (`make bench` runs everything).",
            "",
            "`floor` is the same work done with the bare database driver or a bare ASGI app;",
            "`ratio` is explained per benchmark in the note column. Absolute figures drift from",
            "run to run on a shared machine; the ratios are what to compare.",
            "",
            *table,
            "",
        ]
        extra = ROOT / "docs" / "benchmarks-notes.md"
        if extra.exists():
            text += ["", extra.read_text()]
        (ROOT / "docs" / "benchmarks.md").write_text("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
