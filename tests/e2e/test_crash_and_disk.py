"""A crash in the middle of a large push, and a full disk under the SQLite data dir."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from e2e.conftest import server_env
from e2e.test_faults import register_and_login
from support.server_process import ServerProcess


def _templates(count: int, stamp: str, text: str = "x") -> list[dict[str, Any]]:
    return [
        {
            "id": str(uuid.uuid4()),
            "name": f"template {i}",
            "prompt": text,
            "createdAt": stamp,
            "modifiedAt": stamp,
        }
        for i in range(count)
    ]


def _push_body(templates: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "lastSyncTimestamp": "0001-01-01T00:00:00",
        "isE2EEEncrypted": False,
        "templates": {"upserted": templates, "deleted": []},
    }


def _pull_ids(base: str, headers: dict[str, str]) -> set[str]:
    response = httpx.get(f"{base}/api/sync/pull", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()["templates"]["upserted"]}


def test_sigkill_mid_push_leaves_it_whole_or_absent(
    e2e_backend: tuple[str, str], data_dir: Path
) -> None:
    backend, schema = e2e_backend
    env = server_env(backend, schema, PIA_RATE_LIMITS__ENABLED="false")
    server = ServerProcess(data_dir, env).start()
    try:
        headers = register_and_login(server.url)
        # Large enough that the kill lands while the server reads, validates or writes it.
        batch = _templates(5000, "2026-03-27T12:00:00.1234567Z", "y" * 400)
        body = _push_body(batch)
        outcome: dict[str, Any] = {}

        def push() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{server.url}/api/sync/push", json=body, headers=headers, timeout=60
                )
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=push)
        sender.start()
        time.sleep(0.4)
        server.kill()
        sender.join(timeout=60)
        server = ServerProcess(data_dir, env, port=server.port).start()
        seen = _pull_ids(server.url, headers)
        pushed = {t["id"] for t in batch}
        assert seen in (set(), pushed), f"half a push landed: {len(seen)} of {len(pushed)}"
        answered = outcome.get("response")
        if answered is not None and answered.status_code == 200:
            assert seen == pushed, "an acknowledged push must survive the crash"
        retry = httpx.post(f"{server.url}/api/sync/push", json=body, headers=headers, timeout=60)
        assert retry.status_code == 200, retry.text
        assert _pull_ids(server.url, headers) == pushed
    finally:
        server.stop()


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str) -> Iterator[bool]:
    """A size-limited tmpfs at ``path`` when the machine allows mounting (root), else nothing."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_full_disk_gives_clear_errors_and_corrupts_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "small"
    with _small_filesystem(data_dir, "3m") as mounted:
        env = server_env("sqlite", "disk", PIA_RATE_LIMITS__ENABLED="false")
        with ServerProcess(data_dir, env) as server:
            headers = register_and_login(server.url)
            if not mounted:
                # No mount here: simulate the full disk with SQLite's own size cap instead.
                with sqlite3.connect(data_dir / "pia.db") as db:
                    pages = db.execute("PRAGMA page_count").fetchone()[0]
                    db.execute(f"PRAGMA max_page_count = {pages + 200}")
            kept: set[str] = set()
            statuses: list[int] = []
            for round_no in range(60):
                stamp = f"2026-03-27T12:{round_no % 60:02d}:00Z"
                batch = _templates(40, stamp, "z" * 4000)
                response = httpx.post(
                    f"{server.url}/api/sync/push",
                    json=_push_body(batch),
                    headers=headers,
                    timeout=30,
                )
                statuses.append(response.status_code)
                if response.status_code == 200:
                    kept.update(t["id"] for t in batch)
                    continue
                assert response.status_code in (503, 507), response.text
                assert response.json()["error"] in ("storage_full", "database_unavailable")
                assert "Traceback" not in response.text
                break
            if mounted:
                assert statuses[-1] in (503, 507), "the small disk never filled up"
            # What was accepted is all there, and the server still answers.
            assert httpx.get(f"{server.url}/healthz").status_code == 200
            if kept:
                assert _pull_ids(server.url, headers) == kept
        with sqlite3.connect(data_dir / "pia.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
