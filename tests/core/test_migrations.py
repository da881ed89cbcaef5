"""Every migration runs up, and down again, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import PG_URL, require_service
from pia_server.core.config import Settings, load_settings
from pia_server.core.database import build_engine, metadata
from pia_server.core.migrations import downgrade, migrate, pending
from pia_server.core.tables import import_all_tables


def _settings(backend: str, tmp_path: Path, schema: str) -> Settings:
    if backend == "postgresql":
        database = {"url": PG_URL, "schema": schema}
    else:
        database = {"url": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"}
    return load_settings(
        environ={},
        overrides={
            "server": {"data_dir": str(tmp_path)},
            "database": database,
            "auth": {"jwt_secret": "s" * 40},
        },
    )


async def _tables(settings: Settings) -> set[str]:
    engine = build_engine(settings)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    await engine.dispose()
    return names - {"alembic_version"}


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
async def test_migrations_up_and_down(backend_name: str, tmp_path: Path) -> None:
    if backend_name == "postgresql":
        require_service("PostgreSQL (PIA_TEST_DATABASE_URL)", bool(PG_URL))
    schema = f"pia_mig_{uuid.uuid4().hex[:10]}"
    settings = _settings(backend_name, tmp_path, schema)
    try:
        assert await pending(settings) if backend_name == "sqlite" else True
        await migrate(settings)
        import_all_tables()
        assert await _tables(settings) == {t.name for t in metadata.sorted_tables}
        assert not await pending(settings)
        await migrate(settings)  # a second run finds nothing to do
        await downgrade(settings, "base")
        assert await _tables(settings) == set()
        await migrate(settings)  # and up again from nothing
        assert not await pending(settings)
    finally:
        if backend_name == "postgresql":
            engine = create_async_engine(PG_URL)
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            await engine.dispose()
