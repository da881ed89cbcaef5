"""AI proxy tables and queries: token-budget windows and aggregated usage counts.

Nothing here ever holds prompt or completion text: budgets are token counts per subject and
window, usage is counts (requests, tokens, latency) per day, user, provider, mode and outcome.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.core.database import metadata

ai_budget_windows = Table(
    "ai_budget_windows",
    metadata,
    # "user:<uuid>" or "ip:<sha256 prefix>" (the address itself is never stored).
    Column("subject", String(80), nullable=False),
    # "hour" or "day".
    Column("period", String(8), nullable=False),
    # Start of the fixed window, in .NET ticks (UTC).
    Column("window_start", BigInteger, nullable=False),
    # Reserved plus settled tokens in this window.
    Column("tokens", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("subject", "period", "window_start", name="pk_ai_budget_windows"),
)

ai_usage = Table(
    "ai_usage",
    metadata,
    # Start of the UTC day, in ticks.
    Column("day", BigInteger, nullable=False),
    # The user's id, or "" for anonymous callers.
    Column("user_id", String(36), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("mode", String(16), nullable=False),
    # "ok", "client_closed", or the error code the caller saw.
    Column("outcome", String(32), nullable=False),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("latency_ms", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("day", "user_id", "provider", "mode", "outcome", name="pk_ai_usage"),
)


def _insert(conn: AsyncConnection, table: Table) -> Any:
    # Both dialects speak ON CONFLICT; SQLAlchemy exposes it per dialect.
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def try_add_tokens(
    conn: AsyncConnection, subject: str, period: str, window_start: int, amount: int, limit: int
) -> bool:
    """Add ``amount`` to the window if the total stays within ``limit`` (``amount <= limit``).

    One conditional upsert: the row lock (PostgreSQL) or the write transaction (SQLite) makes
    the check and the increment atomic, and a refused increment touches no row.
    """
    c = ai_budget_windows.c
    statement = _insert(conn, ai_budget_windows).values(
        subject=subject, period=period, window_start=window_start, tokens=amount
    )
    result = await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["subject", "period", "window_start"],
            set_={"tokens": c.tokens + amount},
            where=c.tokens + amount <= limit,
        )
    )
    return bool(result.rowcount == 1)


async def adjust_tokens(
    conn: AsyncConnection, subject: str, period: str, window_start: int, delta: int
) -> None:
    """Settle a reservation: move the window by the difference between real and reserved."""
    if delta == 0:
        return
    c = ai_budget_windows.c
    await conn.execute(
        update(ai_budget_windows)
        .where(c.subject == subject, c.period == period, c.window_start == window_start)
        .values(tokens=c.tokens + delta)
    )


async def used_tokens(conn: AsyncConnection, subject: str, period: str, window_start: int) -> int:
    c = ai_budget_windows.c
    result = await conn.execute(
        ai_budget_windows.select()
        .with_only_columns(c.tokens)
        .where(c.subject == subject, c.period == period, c.window_start == window_start)
    )
    value = result.scalar_one_or_none()
    return int(value or 0)


async def delete_windows_before(conn: AsyncConnection, before: int) -> None:
    await conn.execute(delete(ai_budget_windows).where(ai_budget_windows.c.window_start < before))


async def add_usage(
    conn: AsyncConnection,
    *,
    day: int,
    user_id: str,
    provider: str,
    mode: str,
    outcome: str,
    input_tokens: int,
    output_tokens: int,
    latency_ms: int,
) -> None:
    c = ai_usage.c
    statement = _insert(conn, ai_usage).values(
        day=day,
        user_id=user_id,
        provider=provider,
        mode=mode,
        outcome=outcome,
        requests=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_ms=latency_ms,
    )
    excluded = statement.excluded
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["day", "user_id", "provider", "mode", "outcome"],
            set_={
                "requests": c.requests + 1,
                "input_tokens": c.input_tokens + excluded.input_tokens,
                "output_tokens": c.output_tokens + excluded.output_tokens,
                "latency_ms": c.latency_ms + excluded.latency_ms,
            },
        )
    )
