"""Auth tables and queries."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Boolean, Column, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.core.database import metadata

users = Table(
    "users",
    metadata,
    # Lowercase hyphenated UUID text: the very string the client puts into E2EE AAD.
    Column("id", String(36), primary_key=True),
    Column("email", String(320), nullable=False),
    # Lower-cased email, unique: emails compare case-insensitively.
    Column("email_normalized", String(320), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False, default=""),
    Column("provider", String(32), nullable=False, default="local"),
    Column("password_hash", String(256), nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    email: str
    display_name: str
    provider: str
    disabled: bool
    created_at: int


_USER_COLUMNS = (
    users.c.id,
    users.c.email,
    users.c.display_name,
    users.c.provider,
    users.c.disabled,
    users.c.created_at,
)


async def get_user(conn: AsyncConnection, user_id: str) -> UserRow | None:
    row = (await conn.execute(select(*_USER_COLUMNS).where(users.c.id == user_id))).first()
    return UserRow(*row) if row is not None else None
