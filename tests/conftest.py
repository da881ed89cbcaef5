"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL and Redis come from ``PIA_TEST_DATABASE_URL`` and ``PIA_TEST_REDIS_URL``. Without them
those tests skip on a developer machine, and fail under CI (``CI=true``): CI must run them all.

Each pytest process works in its own PostgreSQL schema and Redis key prefix, so that several test
runs can share one server; each test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import create_async_engine

from pia_server.app import create_app
from pia_server.auth.storage import users
from pia_server.auth.tokens import AccessTokens
from pia_server.core.config import Settings, load_settings
from pia_server.core.context import AppContext
from pia_server.core.database import metadata
from pia_server.core.logging import configure_logging
from pia_server.core.migrations import migrate
from pia_server.core.tables import import_all_tables
from pia_server.core.wire import now_ticks

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL = os.environ.get("PIA_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("PIA_TEST_REDIS_URL", "")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
PG_SCHEMA = f"pia_test_{RUN_ID}"
BACKENDS = ("sqlite", "postgresql")


def require_service(name: str, available: bool) -> None:
    """Skip locally, fail in CI: a service test must never silently not run there."""
    if available:
        return
    message = f"{name} is not configured for tests"
    if IN_CI:
        pytest.fail(f"{message}; CI must run every {name} test", pytrace=False)
    pytest.skip(message)


def base_overrides(tmp_path: Path, backend: str, schema: str = PG_SCHEMA) -> dict[str, Any]:
    data_dir = tmp_path / "data"
    tree: dict[str, Any] = {
        "server": {"data_dir": str(data_dir), "log_format": "json"},
        "auth": {"jwt_secret": "test-secret-" + "x" * 40},
        "sync": {"encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
        "redis": {"key_prefix": f"pia_test_{RUN_ID}"},
    }
    if backend == "postgresql":
        tree["database"] = {"url": PG_URL, "schema": schema, "pool_size": 5}
    else:
        tree["database"] = {"url": f"sqlite+aiosqlite:///{data_dir / 'pia.db'}"}
    return tree


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session", autouse=True)
def _structured_logs() -> None:
    """Logs go through the standard library, so that ``caplog`` sees what a server would write."""
    configure_logging("info", "json")


@pytest.fixture(scope="session")
def _migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Migrate once per run: a template SQLite file, and this run's PostgreSQL schema."""
    import_all_tables()
    root = tmp_path_factory.mktemp("template")
    sqlite_settings = load_settings(environ={}, overrides=base_overrides(root, "sqlite"))
    asyncio.run(migrate(sqlite_settings))
    templates = {"sqlite": root / "data" / "pia.db"}
    if PG_URL:
        asyncio.run(
            migrate(load_settings(environ={}, overrides=base_overrides(root, "postgresql")))
        )
    yield templates
    if PG_URL:
        asyncio.run(_drop_schema(PG_SCHEMA))


async def _drop_schema(schema: str) -> None:
    engine = create_async_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


async def _truncate_pg() -> None:
    engine = create_async_engine(
        PG_URL, connect_args={"server_settings": {"search_path": PG_SCHEMA}}
    )
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "postgresql":
        require_service("PostgreSQL (PIA_TEST_DATABASE_URL)", bool(PG_URL))
    return name


@pytest.fixture
def redis_url() -> str:
    require_service("Redis (PIA_TEST_REDIS_URL)", bool(REDIS_URL))
    return REDIS_URL


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(
    backend: str, tmp_path: Path, _migrated_templates: dict[str, Path]
) -> SettingsFactory:
    """Settings on a fresh, migrated database of the test's backend; pass section overrides."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        shutil.copyfile(_migrated_templates["sqlite"], data_dir / "pia.db")
    else:
        asyncio.run(_truncate_pg())

    def factory(**sections: dict[str, Any]) -> Settings:
        return load_settings(
            environ={}, overrides=deep_merge(base_overrides(tmp_path, backend), sections)
        )

    return factory


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_for(app: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", **kwargs
    )


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # a fixture value, not a test class
    id: str
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


UserFactory = Callable[..., Awaitable[TestUser]]


async def create_test_user(
    app: FastAPI, email: str | None = None, display_name: str = "Test User"
) -> TestUser:
    """Insert a user straight into the database and issue an access token for it."""
    ctx: AppContext = app.state.ctx
    user_id = str(uuid.uuid4())
    email = email or f"user-{user_id[:8]}@example.com"
    async with ctx.db.write() as conn:
        await conn.execute(
            insert(users).values(
                id=user_id,
                email=email,
                email_normalized=email.lower(),
                display_name=display_name,
                provider="local",
                disabled=False,
                created_at=now_ticks(),
            )
        )
    token = ctx.domain("access_tokens", AccessTokens).issue(user_id)
    return TestUser(user_id, email, token)


@pytest.fixture
def make_user(app: FastAPI) -> UserFactory:
    async def factory(email: str | None = None, display_name: str = "Test User") -> TestUser:
        return await create_test_user(app, email, display_name)

    return factory
