"""End-to-end fixtures: the real ``pia-server serve`` process on a loopback port."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import PG_URL, REDIS_URL, require_service

JWT_SECRET = "e2e-secret-" + "z" * 40
SYNC_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def server_env(backend: str, schema: str, **extra: str) -> dict[str, str]:
    env = {
        "PIA_JWT_SECRET": JWT_SECRET,
        "PIA_SYNC__ENCRYPTION_KEY": SYNC_KEY,
        "PIA_REDIS__KEY_PREFIX": f"pia_e2e_{schema}",
    }
    if backend == "postgresql":
        env["PIA_DATABASE_URL"] = PG_URL
        env["PIA_DATABASE__SCHEMA"] = schema
    env.update(extra)
    return env


async def drop_schema(schema: str) -> None:
    engine = create_async_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def e2e_backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(backend, schema): a fresh PostgreSQL schema per test, dropped afterwards."""
    backend = str(request.param)
    schema = f"pia_e2e_{uuid.uuid4().hex[:10]}"
    if backend == "postgresql":
        require_service("PostgreSQL (PIA_TEST_DATABASE_URL)", bool(PG_URL))
    yield backend, schema
    if backend == "postgresql":
        asyncio.run(drop_schema(schema))


@pytest.fixture
def redis_for_e2e() -> str:
    require_service("Redis (PIA_TEST_REDIS_URL)", bool(REDIS_URL))
    return REDIS_URL


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
