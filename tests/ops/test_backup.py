"""``pia-server backup`` / ``restore`` on SQLite and PostgreSQL, under concurrent writes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text

from conftest import PG_URL, SettingsFactory, client_for, create_test_user, running_app
from pia_server.auth.dependencies import CurrentUser
from pia_server.core.audit import audit_events, record_event
from pia_server.core.config import Settings, load_settings
from pia_server.core.context import AppContext
from pia_server.core.migrations import migrate
from pia_server.ops.backup import BackupError, backup, libpq_connection, read_manifest, restore
from pia_server.ops.cli import cmd_restore

EVENT = "ops.backup_test"
SYNC_KEY = "c3luYy1rZXktZm9yLWJhY2t1cC10ZXN0cy0zMi1ieXQ"


async def _admin(sql: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction: a bare asyncpg connection.
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _with_db(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + database


@pytest.fixture
async def source(
    backend: str, make_settings: SettingsFactory, tmp_path: Path
) -> AsyncIterator[Settings]:
    """A deployment whose JWT secret and sync key live in its data dir, as by default."""
    overrides: dict[str, Any] = {"auth": {"jwt_secret": ""}, "sync": {"encryption_key": ""}}
    if backend == "sqlite":
        settings = make_settings(**overrides)
        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
        (settings.server.data_dir / "sync-key").write_text(SYNC_KEY + "\n")
        yield settings
        return
    schema = f"pia_ops_{uuid.uuid4().hex[:10]}"
    settings = make_settings(database={"schema": schema}, **overrides)
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.server.data_dir / "sync-key").write_text(SYNC_KEY + "\n")
    await migrate(settings)
    try:
        yield settings
    finally:
        await _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def fresh_target(
    backend: str, make_settings: SettingsFactory, tmp_path: Path, source: Settings
) -> AsyncIterator[Settings]:
    """An empty deployment: a new data dir, and on PostgreSQL a new, empty database."""
    data_dir = tmp_path / "restored"
    overrides: dict[str, Any] = {
        "auth": {"jwt_secret": ""},
        "sync": {"encryption_key": ""},
        "server": {"data_dir": str(data_dir)},
    }
    if backend == "sqlite":
        yield make_settings(
            database={"url": f"sqlite+aiosqlite:///{data_dir / 'pia.db'}"}, **overrides
        )
        return
    database = f"pia_ops_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{database}"')
    try:
        yield make_settings(
            database={"url": _with_db(PG_URL, database), "schema": source.database.schema_name},
            **overrides,
        )
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def _write_events(ctx: AppContext, stop: asyncio.Event, committed: list[int]) -> None:
    """Insert audit events one transaction at a time; ``committed[0]`` counts those done."""
    n = committed[0]
    while not stop.is_set():
        async with ctx.db.write() as conn:
            await record_event(conn, EVENT, details={"n": n})
        n += 1
        committed[0] = n
        await asyncio.sleep(0)


async def _events(ctx: AppContext) -> tuple[int, int, int]:
    """(count, min id, max id) of the test's audit events."""
    async with ctx.db.read() as conn:
        row = (
            await conn.execute(
                select(
                    func.count(), func.min(audit_events.c.id), func.max(audit_events.c.id)
                ).where(audit_events.c.event == EVENT)
            )
        ).one()
    return int(row[0]), int(row[1] or 0), int(row[2] or 0)


def _add_me_route(app: FastAPI) -> None:
    async def me(user: CurrentUser) -> dict[str, str]:
        return {"id": user.id}

    app.add_api_route("/_ops_test/me", me, methods=["GET"])


async def test_backup_under_load_restores_a_consistent_snapshot(
    backend: str, source: Settings, fresh_target: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "backup.tar.gz"
    async with running_app(source) as app:
        ctx: AppContext = app.state.ctx
        user = await create_test_user(app)
        async with ctx.db.write() as conn:
            for n in range(300):  # enough pages that the copy takes a moment
                await record_event(conn, EVENT, details={"n": n, "pad": "x" * 200})
        committed = [300]
        stop = asyncio.Event()
        writer = asyncio.create_task(_write_events(ctx, stop, committed))
        try:
            while committed[0] < 320:  # noqa: ASYNC110 - polling a counter, briefly
                await asyncio.sleep(0.005)
            before = committed[0]
            result = await asyncio.to_thread(backup, source, archive)
            after = committed[0]
            # Keep writing after the snapshot too: none of that may show up in the copy.
            target_n = after + 20
            while committed[0] < target_n:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            await writer
        assert after > before, "the writer must have kept committing while the backup ran"
        source_count = (await _events(ctx))[0]

    manifest = result.manifest
    snapshot_rows = manifest["row_counts"]["audit_events"]
    # Every row committed before the backup started is in it; none after it finished.
    assert before <= snapshot_rows <= after
    assert source_count > snapshot_rows
    assert manifest["backend"] == backend
    assert manifest["secrets"] == ["jwt-secret", "sync-key"]
    assert manifest["row_counts"]["users"] == 1
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    restored = await asyncio.to_thread(restore, fresh_target, archive)
    assert sorted(restored.secrets) == ["jwt-secret", "sync-key"]
    for name in ("jwt-secret", "sync-key"):
        copy = fresh_target.server.data_dir / name
        assert copy.read_text() == (source.server.data_dir / name).read_text()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    if backend == "sqlite":
        db = sqlite3.connect(fresh_target.server.data_dir / "pia.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            db.close()

    async with running_app(fresh_target) as app2:
        _add_me_route(app2)
        ctx2: AppContext = app2.state.ctx
        count, low, high = await _events(ctx2)
        # A snapshot: exactly the rows of one moment, without holes.
        assert count == snapshot_rows
        assert high - low + 1 == count
        async with client_for(app2) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            # The token was issued before the backup, with the data dir's JWT secret.
            me = await http.get("/_ops_test/me", headers=user.headers)
            assert me.status_code == 200, me.text
            assert me.json() == {"id": user.id}
        # The restored database carries on: a new row gets an id above every restored one
        # (PostgreSQL's sequence may have moved on during the dump: a gap, never a clash).
        async with ctx2.db.write() as conn:
            await record_event(conn, EVENT)
        new_count, _, new_high = await _events(ctx2)
        assert new_count == count + 1
        assert new_high > high


async def test_restore_refuses_a_database_with_data_unless_forced(
    source: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "backup.tar.gz"
    async with running_app(source) as app:
        await create_test_user(app)
        async with app.state.ctx.db.write() as conn:
            await record_event(conn, EVENT, details={"when": "before"})
    await asyncio.to_thread(backup, source, archive)
    async with running_app(source) as app, app.state.ctx.db.write() as conn:
        await record_event(conn, EVENT, details={"when": "after"})

    with pytest.raises(BackupError, match="already holds data"):
        await asyncio.to_thread(restore, source, archive)
    async with running_app(source) as app:
        assert (await _events(app.state.ctx))[0] == 2  # untouched

    await asyncio.to_thread(restore, source, archive, force=True)
    async with running_app(source) as app, app.state.ctx.db.read() as conn:
        details = (
            (
                await conn.execute(
                    select(audit_events.c.details).where(audit_events.c.event == EVENT)
                )
            )
            .scalars()
            .all()
        )
    assert details == ['{"when":"before"}']


async def test_a_damaged_archive_changes_nothing(
    backend: str, source: Settings, fresh_target: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "backup.tar.gz"
    await asyncio.to_thread(backup, source, archive)
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    with pytest.raises(BackupError, match=r"damaged|not a pia-server backup"):
        await asyncio.to_thread(restore, fresh_target, damaged)

    leftovers = (
        sorted(p.name for p in fresh_target.server.data_dir.iterdir())
        if fresh_target.server.data_dir.exists()
        else []
    )
    assert leftovers == []
    if backend == "postgresql":
        async with running_app(fresh_target) as app, app.state.ctx.db.read() as conn:
            tables = (
                await conn.execute(
                    text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": fresh_target.database.schema_name},
                )
            ).scalar_one()
        assert tables == 0


async def test_a_file_that_is_not_a_backup_is_refused(source: Settings, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not an archive at all")
    with pytest.raises(BackupError, match="not a pia-server backup"):
        await asyncio.to_thread(restore, source, bogus)


async def test_backup_refuses_to_overwrite_without_force(source: Settings, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar.gz"
    archive.write_text("an older backup")
    with pytest.raises(BackupError, match="exists"):
        await asyncio.to_thread(backup, source, archive)
    assert archive.read_text() == "an older backup"
    result = await asyncio.to_thread(backup, source, tmp_path)  # a directory: a dated name in it
    assert result.path.parent == tmp_path
    assert result.path.name.startswith("pia-backup-")


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sqlite_restore_refuses_while_the_server_runs(
    source: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "backup.tar.gz"
    await asyncio.to_thread(backup, source, archive)
    async with running_app(source) as app:
        await create_test_user(app)  # the server holds the database open
        with pytest.raises(BackupError, match="in use"):
            await asyncio.to_thread(restore, source, archive, force=True)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_backup_is_restored_only_into_the_same_backend(
    source: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "backup.tar.gz"
    await asyncio.to_thread(backup, source, archive)
    pg = load_settings(
        environ={}, overrides={"database": {"url": "postgresql+asyncpg://u@127.0.0.1:1/x"}}
    )
    with pytest.raises(BackupError, match="sqlite database and this deployment uses postgresql"):
        await asyncio.to_thread(restore, pg, archive)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_postgresql_restore_names_a_schema_mismatch(
    source: Settings, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    archive = tmp_path / "backup.tar.gz"
    await asyncio.to_thread(backup, source, archive)
    other = make_settings(database={"schema": "pia_ops_elsewhere"})
    with pytest.raises(BackupError, match=f"schema {source.database.schema_name}"):
        await asyncio.to_thread(restore, other, archive)


def test_the_postgresql_password_never_reaches_the_command_line() -> None:
    settings = load_settings(
        environ={},
        overrides={
            "database": {"url": "postgresql+asyncpg://pia:s3cr%40t@db.example:6543/pia?ssl=require"}
        },
    )
    url, env = libpq_connection(settings)
    assert "s3cr" not in url
    assert url.startswith("postgresql://pia@db.example:6543/pia?")
    assert "sslmode=require" in url
    assert env["PGPASSWORD"] == "s3cr@t"


async def test_backup_command_runs_as_a_process(
    backend: str, source: Settings, fresh_target: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "cli-backup.tar.gz"
    async with running_app(source) as app:
        await create_test_user(app)
    env = {
        **os.environ,
        "PIA_DATA_DIR": str(source.server.data_dir),
        "PIA_DATABASE_URL": source.database_url,
        "PIA_LOG_FORMAT": "json",
    }
    env.pop("PIA_JWT_SECRET", None)
    env.pop("PIA_CONFIG", None)
    if backend == "postgresql":
        env["PIA_DATABASE__SCHEMA"] = source.database.schema_name
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pia_server", "backup", str(archive)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "contains secrets" in done.stdout
    secret = (source.server.data_dir / "jwt-secret").read_text().strip()
    assert secret not in done.stdout + done.stderr
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    member = "pia.db" if backend == "sqlite" else "pia.pgdump"
    assert names == {"manifest.json", member, "secrets/jwt-secret", "secrets/sync-key"}
    manifest = read_manifest(archive)
    assert manifest["row_counts"]["users"] == 1
    assert json.loads(json.dumps(manifest))["alembic_revisions"]

    class Args:
        path = str(archive)
        force = False

    assert await asyncio.to_thread(cmd_restore, fresh_target, Args()) == 0  # type: ignore[arg-type]
    async with running_app(fresh_target) as app, app.state.ctx.db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar_one() == 1
