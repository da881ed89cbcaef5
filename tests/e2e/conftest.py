"""End-to-end fixtures: the real ``pia-server serve`` process on a loopback port."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import PG_URL, REDIS_URL, require_service
from support.server_process import ServerProcess

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


# ---- shared servers for the client-flow and scale-out suites ------------------------------

# Argon2id at its smallest cost: these suites test flows, not hashing strength.
FAST_ARGON2_ENV = {
    "PIA_AUTH__ARGON2_TIME_COST": "1",
    "PIA_AUTH__ARGON2_MEMORY_KIB": "64",
    "PIA_AUTH__ARGON2_PARALLELISM": "1",
}


class ServerPool:
    """Real server processes on one backend; each gets its own data dir and PostgreSQL schema
    unless told to share one. Everything is stopped (and every schema dropped) at teardown."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.servers: list[ServerProcess] = []
        self.schemas: set[str] = set()

    def new_schema(self) -> str:
        schema = f"pia_e2e_{uuid.uuid4().hex[:10]}"
        if self.backend == "postgresql":
            self.schemas.add(schema)
        return schema

    def start(
        self,
        env: dict[str, str] | None = None,
        *,
        schema: str | None = None,
        config_toml: str | None = None,
        port: int | None = None,
    ) -> ServerProcess:
        schema = schema or self.new_schema()
        full_env = server_env(self.backend, schema, **FAST_ARGON2_ENV, **(env or {}))
        server = ServerProcess(
            self.root / f"data-{uuid.uuid4().hex[:8]}", full_env, config_toml=config_toml, port=port
        )
        self.servers.append(server)
        return server.start()

    def start_many(self, specs: dict[str, dict[str, Any]]) -> dict[str, ServerProcess]:
        """Start several servers (each ``start(**spec)``), as many at once as there are cores:
        start-up is mostly imports, so more at once only contend."""
        with ThreadPoolExecutor(max_workers=min(len(specs), os.cpu_count() or 2)) as executor:
            futures = {name: executor.submit(self._start_kw, spec) for name, spec in specs.items()}
            return {name: future.result() for name, future in futures.items()}

    def _start_kw(self, spec: dict[str, Any]) -> ServerProcess:
        return self.start(**spec)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for schema in self.schemas:
            asyncio.run(drop_schema(schema))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server_pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerPool]:
    """A pool of real servers for one backend, shared by the tests of a module."""
    backend = str(request.param)
    if backend == "postgresql":
        require_service("PostgreSQL (PIA_TEST_DATABASE_URL)", bool(PG_URL))
    pool = ServerPool(backend, tmp_path_factory.mktemp(f"e2e-{backend}"))
    try:
        yield pool
    finally:
        pool.close()
