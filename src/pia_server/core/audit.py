"""The audit log: one table of security and sync events, shown to each user at /api/sync/events.

An event records who, what, when, from where (IP, user agent, device) and small details (counts,
provider). It never holds a token, password, key or prompt text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.core.database import metadata
from pia_server.core.wire import now_ticks

audit_events = Table(
    "audit_events",
    metadata,
    # INTEGER on SQLite so that the column is the rowid (auto-increment); BIGINT elsewhere.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("user_id", String(36), nullable=True),
    Column("event", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("ip", String(64), nullable=True),
    Column("user_agent", String(256), nullable=True),
    Column("device_id", String(64), nullable=True),
    Column("provider", String(32), nullable=True),
    Column("details", Text, nullable=False, default="{}"),
    Index("ix_audit_events_user_id_id", "user_id", "id"),
)


# Built once: every push and sign-in records an event.
_INSERT_EVENT = insert(audit_events)


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """Where a request came from, for the audit log."""

    ip: str | None = None
    user_agent: str | None = None


async def record_event(
    conn: AsyncConnection,
    event: str,
    *,
    user_id: str | None = None,
    origin: RequestOrigin | None = None,
    device_id: str | None = None,
    provider: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    origin = origin or RequestOrigin()
    row = {
        "user_id": user_id,
        "event": event,
        "created_at": now_ticks(),
        "ip": origin.ip,
        "user_agent": (origin.user_agent or "")[:256] or None,
        "device_id": device_id,
        "provider": provider,
        "details": json.dumps(details or {}, separators=(",", ":")),
    }
    await conn.execute(_INSERT_EVENT, row)
