"""A serving process keeps its start-up objects out of the GC and collects young objects rarely."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pia_server.core.heap import YOUNG_THRESHOLD


def test_the_asgi_entry_point_settles_the_heap(tmp_path: Path) -> None:
    # In a child process: the test process itself builds many apps and must not be frozen.
    script = (
        "import gc, json, pia_server.asgi; "
        "print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    )
    env = {"PIA_DATA_DIR": str(tmp_path), "PIA_JWT_SECRET": "s" * 40, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    threshold, frozen = json.loads(out.stdout.strip().splitlines()[-1])
    assert threshold[0] == YOUNG_THRESHOLD
    assert frozen > 10_000  # modules, routes, tables, validators
