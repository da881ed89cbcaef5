"""Apply Alembic migrations from code (``pia-server migrate`` and ``serve``).

On PostgreSQL the upgrade runs under an advisory lock, so several instances starting together
migrate once: the first holds the lock, the others wait and then find nothing left to do.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pia_server.core.config import Settings
from pia_server.core.database import build_engine

# An arbitrary constant that names pia-server's migration lock.
_ADVISORY_LOCK_KEY = 0x5049_4153_4552_5652  # "PIASERVR"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option(
        "script_location", str(Path(__file__).resolve().parent.parent / "migrations")
    )
    return cfg


def _upgrade(connection: Connection, target: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, target)


def _downgrade(connection: Connection, target: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, target)


def _current_heads(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


def expected_heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


async def migrate(settings: Settings, target: str = "heads") -> None:
    engine = build_engine(settings)
    try:
        async with engine.connect() as conn:
            is_pg = conn.dialect.name == "postgresql"
            if is_pg:
                if settings.database.schema_name:
                    await conn.execute(
                        text(f'CREATE SCHEMA IF NOT EXISTS "{settings.database.schema_name}"')
                    )
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                await conn.commit()
            try:
                await conn.run_sync(_upgrade, target)
                await conn.commit()
            finally:
                if is_pg:
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_KEY}
                    )
                    await conn.commit()
    finally:
        await engine.dispose()


async def downgrade(settings: Settings, target: str = "base") -> None:
    engine = build_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_downgrade, target)
            await conn.commit()
    finally:
        await engine.dispose()


async def pending(settings: Settings) -> bool:
    """True when the database is not at the latest revision of every branch."""
    engine = build_engine(settings)
    try:
        async with engine.connect() as conn:
            heads = await conn.run_sync(_current_heads)
    finally:
        await engine.dispose()
    return heads != expected_heads()
