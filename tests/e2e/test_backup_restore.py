"""Back up a running server under load, restore into a fresh deployment, and sync on from there."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import PG_URL
from e2e.conftest import server_env
from support.server_process import ServerProcess

PASSWORD = "correct horse battery staple"


def _template(stamp: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "name": "t", "prompt": "p", "createdAt": stamp}


def _push(base: str, headers: dict[str, str], items: list[dict[str, Any]]) -> httpx.Response:
    body = {
        "lastSyncTimestamp": "0001-01-01T00:00:00",
        "templates": {"upserted": items, "deleted": []},
    }
    return httpx.post(f"{base}/api/sync/push", json=body, headers=headers, timeout=30)


def _login(base: str, email: str) -> dict[str, str]:
    response = httpx.post(
        f"{base}/auth/login/local", json={"email": email, "password": PASSWORD}, timeout=30
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


def _pulled(base: str, headers: dict[str, str]) -> set[str]:
    response = httpx.get(f"{base}/api/sync/pull", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()["templates"]["upserted"]}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pia_server", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _create_database(name: str, drop: bool = False) -> None:
    engine = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        statement = f'DROP DATABASE IF EXISTS "{name}"' if drop else f'CREATE DATABASE "{name}"'
        await conn.execute(text(statement))
    await engine.dispose()


def test_backup_under_load_then_restore_and_sync_on(
    e2e_backend: tuple[str, str], tmp_path: Path
) -> None:
    backend, schema = e2e_backend
    env = server_env(backend, schema, PIA_RATE_LIMITS__ENABLED="false")
    env["PIA_DATA_DIR"] = str(tmp_path / "live")
    email = f"backup-{uuid.uuid4().hex[:8]}@example.com"
    archive = tmp_path / "backup.tar.gz"
    before: set[str] = set()
    with ServerProcess(tmp_path / "live", env) as server:
        created = httpx.post(
            f"{server.url}/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert created.status_code in (200, 201), created.text
        headers = _login(server.url, email)
        first = [_template("2026-03-27T12:00:00Z") for _ in range(50)]
        assert _push(server.url, headers, first).status_code == 200
        before.update(t["id"] for t in first)

        stop = threading.Event()

        def keep_pushing() -> None:
            while not stop.is_set():
                _push(server.url, headers, [_template("2026-03-27T12:30:00Z") for _ in range(5)])

        load = threading.Thread(target=keep_pushing)
        load.start()
        try:
            result = _cli(env, "backup", str(archive))
        finally:
            stop.set()
            load.join(timeout=60)
        assert result.returncode == 0, result.stderr
        assert archive.exists()
        assert oct(archive.stat().st_mode & 0o777) == "0o600"

    restored_env = dict(env)
    restored_env["PIA_DATA_DIR"] = str(tmp_path / "restored")
    database = f"pia_restore_{uuid.uuid4().hex[:8]}"
    if backend == "postgresql":
        asyncio.run(_create_database(database))
        restored_env["PIA_DATABASE_URL"] = PG_URL.rsplit("/", 1)[0] + f"/{database}"
    try:
        result = _cli(restored_env, "restore", str(archive))
        assert result.returncode == 0, result.stderr
        with ServerProcess(tmp_path / "restored", restored_env) as server:
            headers = _login(server.url, email)  # the account came along
            after_restore = _pulled(server.url, headers)
            assert before <= after_restore
            more = [_template("2026-03-28T08:00:00Z") for _ in range(10)]
            assert _push(server.url, headers, more).status_code == 200
            assert _pulled(server.url, headers) == after_restore | {t["id"] for t in more}
    finally:
        if backend == "postgresql":
            asyncio.run(_create_database(database, drop=True))
