"""E2EE tables and queries: devices, onboarding sessions, wrapped user master keys, recovery.

The server only ever holds public keys, wrapped keys and opaque blobs. Other domains rely on
:func:`is_e2ee_enabled` and :func:`touch_device`; keep their names and signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.auth.storage import users
from pia_server.core.database import metadata
from pia_server.core.rawsql import RawQuery, ReadConnection
from pia_server.core.wire import now_ticks


class DeviceStatus(IntEnum):
    """The client's ``DeviceStatus`` enum; it travels as an int."""

    PENDING = 0
    ACTIVE = 1
    REVOKED = 2


# One row per account that has touched E2EE: its UMK state, recovery copy and proof key.
e2ee_accounts = Table(
    "e2ee_accounts",
    metadata,
    Column(
        "user_id",
        String(36),
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("umk_version", Integer, nullable=False, default=1),
    # Set when the first wrapped UMK is stored; E2EE is never switched off again.
    Column("enabled_at", BigInteger, nullable=True),
    Column("recovery_ciphertext", String(128), nullable=True),
    Column("recovery_kdf_salt", String(128), nullable=True),
    Column("recovery_kdf_memory_cost_kb", Integer, nullable=True),
    Column("recovery_kdf_time_cost", Integer, nullable=True),
    Column("recovery_kdf_parallelism", Integer, nullable=True),
    Column("recovery_wrap_version", Integer, nullable=True),
    Column("recovery_umk_version", Integer, nullable=True),
    Column("recovery_created_at", BigInteger, nullable=True),
    Column("proof_key", String(64), nullable=True),
    Column("proof_key_version", Integer, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)

e2ee_devices = Table(
    "e2ee_devices",
    metadata,
    # Device ids are the client's SyncDeviceId: unique per user, not globally (one machine
    # can hold two accounts), hence the composite key.
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("device_name", String(200), nullable=False),
    Column("agreement_public_key", String(128), nullable=False),
    Column("signing_public_key", String(128), nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("os_version", String(200), nullable=True),
    Column("app_version", String(200), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("activated_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    Column("last_seen_at", BigInteger, nullable=True),
)

e2ee_onboarding_sessions = Table(
    "e2ee_onboarding_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(36), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("server_challenge", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    # Spent by an approval or activation, or superseded by a newer registration or a revocation.
    Column("closed_at", BigInteger, nullable=True),
    ForeignKeyConstraint(
        ["user_id", "device_id"],
        ["e2ee_devices.user_id", "e2ee_devices.device_id"],
        ondelete="CASCADE",
    ),
    Index("ix_e2ee_onboarding_sessions_user_id_device_id", "user_id", "device_id"),
)

e2ee_wrapped_umks = Table(
    "e2ee_wrapped_umks",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("ciphertext", String(128), nullable=False),
    Column("hkdf_salt", String(128), nullable=False),
    Column("wrap_version", Integer, nullable=False),
    Column("created_by_device_id", String(64), nullable=False),
    Column("approver_signature", String(128), nullable=True),
    Column("signature_version", Integer, nullable=True),
    Column("onboarding_session_id", String(64), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    ForeignKeyConstraint(
        ["user_id", "device_id"],
        ["e2ee_devices.user_id", "e2ee_devices.device_id"],
        ondelete="CASCADE",
    ),
)

# Recovery activations per user, for the 5-per-hour limit shared by every instance.
e2ee_activation_attempts = Table(
    "e2ee_activation_attempts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("attempted_at", BigInteger, nullable=False),
    Index("ix_e2ee_activation_attempts_user_id_attempted_at", "user_id", "attempted_at"),
)


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    user_id: str
    umk_version: int
    enabled_at: int | None
    recovery_ciphertext: str | None
    recovery_kdf_salt: str | None
    recovery_kdf_memory_cost_kb: int | None
    recovery_kdf_time_cost: int | None
    recovery_kdf_parallelism: int | None
    recovery_wrap_version: int | None
    recovery_umk_version: int | None
    recovery_created_at: int | None
    proof_key: str | None
    proof_key_version: int | None

    @property
    def is_enabled(self) -> bool:
        return self.enabled_at is not None

    @property
    def has_recovery(self) -> bool:
        return self.recovery_ciphertext is not None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    user_id: str
    device_id: str
    device_name: str
    agreement_public_key: str
    signing_public_key: str
    status: int
    os_version: str | None
    app_version: str | None
    created_at: int
    activated_at: int | None
    revoked_at: int | None
    last_seen_at: int | None


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    user_id: str
    device_id: str
    server_challenge: str
    created_at: int
    expires_at: int
    closed_at: int | None


@dataclass(frozen=True, slots=True)
class WrappedUmkRow:
    user_id: str
    device_id: str
    ciphertext: str
    hkdf_salt: str
    wrap_version: int
    created_by_device_id: str
    approver_signature: str | None
    signature_version: int | None
    onboarding_session_id: str | None
    created_at: int


def _names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


_ACCOUNT_COLUMNS = tuple(e2ee_accounts.c[name] for name in _names(AccountRow))
_DEVICE_COLUMNS = tuple(e2ee_devices.c[name] for name in _names(DeviceRow))
_SESSION_COLUMNS = tuple(e2ee_onboarding_sessions.c[name] for name in _names(SessionRow))
_WRAPPED_COLUMNS = tuple(e2ee_wrapped_umks.c[name] for name in _names(WrappedUmkRow))


# --------------------------------------------------------------------------
# The two functions other domains call
# --------------------------------------------------------------------------


# Asked on every sync push and status request: run on the bare driver (see core.rawsql).
_ENABLED_AT = RawQuery(
    select(e2ee_accounts.c.enabled_at).where(
        e2ee_accounts.c.user_id == bindparam("user_id", type_=String())
    )
)


async def is_e2ee_enabled(conn: ReadConnection, user_id: str) -> bool:
    """True once the account has a user master key (there is no way back to plaintext)."""
    rows = await _ENABLED_AT.all(conn, user_id=user_id)
    return bool(rows) and rows[0][0] is not None


_TOUCH_DEVICE = (
    update(e2ee_devices)
    .where(
        e2ee_devices.c.user_id == bindparam("uid"),
        e2ee_devices.c.device_id == bindparam("did"),
    )
    .values(last_seen_at=bindparam("now"))
)


async def touch_device(conn: AsyncConnection, user_id: str, device_id: str) -> None:
    """Record that a known device of this user was seen now (``lastSeenAt``); unknown: no-op."""
    # Built once: this runs on every push.
    params = {"uid": user_id, "did": device_id, "now": now_ticks()}
    await conn.execute(_TOUCH_DEVICE, params)


# --------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------


async def lock_user(conn: AsyncConnection, user_id: str) -> None:
    """Serialize E2EE writes of one user (PostgreSQL row lock; SQLite writes are serial anyway).

    Without it two devices registering at once could both become the "first" device.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())


async def get_account(conn: AsyncConnection, user_id: str) -> AccountRow | None:
    row = (
        await conn.execute(select(*_ACCOUNT_COLUMNS).where(e2ee_accounts.c.user_id == user_id))
    ).first()
    return AccountRow(*row) if row is not None else None


async def ensure_account(conn: AsyncConnection, user_id: str) -> AccountRow:
    account = await get_account(conn, user_id)
    if account is not None:
        return account
    await conn.execute(
        insert(e2ee_accounts).values(user_id=user_id, umk_version=1, updated_at=now_ticks())
    )
    created = await get_account(conn, user_id)
    assert created is not None
    return created


async def enable_account(conn: AsyncConnection, user_id: str, now: int) -> bool:
    """Mark the account as having a UMK; True when this call turned E2EE on."""
    account = await ensure_account(conn, user_id)
    if account.is_enabled:
        return False
    await conn.execute(
        update(e2ee_accounts)
        .where(e2ee_accounts.c.user_id == user_id)
        .values(enabled_at=now, updated_at=now)
    )
    return True


@dataclass(frozen=True, slots=True)
class RecoveryBlob:
    ciphertext: str
    kdf_salt: str
    kdf_memory_cost_kb: int
    kdf_time_cost: int
    kdf_parallelism: int
    wrap_version: int
    umk_version: int
    created_at: int


async def store_recovery(conn: AsyncConnection, user_id: str, blob: RecoveryBlob, now: int) -> None:
    await ensure_account(conn, user_id)
    await conn.execute(
        update(e2ee_accounts)
        .where(e2ee_accounts.c.user_id == user_id)
        .values(
            recovery_ciphertext=blob.ciphertext,
            recovery_kdf_salt=blob.kdf_salt,
            recovery_kdf_memory_cost_kb=blob.kdf_memory_cost_kb,
            recovery_kdf_time_cost=blob.kdf_time_cost,
            recovery_kdf_parallelism=blob.kdf_parallelism,
            recovery_wrap_version=blob.wrap_version,
            recovery_umk_version=blob.umk_version,
            recovery_created_at=blob.created_at,
            updated_at=now,
        )
    )


def recovery_of(account: AccountRow) -> RecoveryBlob | None:
    if account.recovery_ciphertext is None:
        return None
    return RecoveryBlob(
        ciphertext=account.recovery_ciphertext,
        kdf_salt=account.recovery_kdf_salt or "",
        kdf_memory_cost_kb=account.recovery_kdf_memory_cost_kb or 0,
        kdf_time_cost=account.recovery_kdf_time_cost or 0,
        kdf_parallelism=account.recovery_kdf_parallelism or 0,
        wrap_version=account.recovery_wrap_version or 1,
        umk_version=account.recovery_umk_version or 1,
        created_at=account.recovery_created_at or 0,
    )


async def store_proof_key(
    conn: AsyncConnection, user_id: str, proof_key: str, version: int, now: int
) -> None:
    await conn.execute(
        update(e2ee_accounts)
        .where(e2ee_accounts.c.user_id == user_id)
        .values(proof_key=proof_key, proof_key_version=version, updated_at=now)
    )


# --------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------


async def get_device(conn: AsyncConnection, user_id: str, device_id: str) -> DeviceRow | None:
    row = (
        await conn.execute(
            select(*_DEVICE_COLUMNS).where(
                e2ee_devices.c.user_id == user_id, e2ee_devices.c.device_id == device_id
            )
        )
    ).first()
    return DeviceRow(*row) if row is not None else None


async def list_devices(conn: AsyncConnection, user_id: str) -> list[DeviceRow]:
    rows = await conn.execute(
        select(*_DEVICE_COLUMNS)
        .where(e2ee_devices.c.user_id == user_id)
        .order_by(e2ee_devices.c.created_at, e2ee_devices.c.device_id)
    )
    return [DeviceRow(*row) for row in rows]


async def count_active_devices(conn: AsyncConnection, user_id: str) -> int:
    value = await conn.scalar(
        select(func.count())
        .select_from(e2ee_devices)
        .where(
            e2ee_devices.c.user_id == user_id,
            e2ee_devices.c.status == int(DeviceStatus.ACTIVE),
        )
    )
    return int(value or 0)


async def insert_device(conn: AsyncConnection, device: DeviceRow) -> None:
    await conn.execute(
        insert(e2ee_devices).values({name: getattr(device, name) for name in _names(DeviceRow)})
    )


async def update_device(
    conn: AsyncConnection, user_id: str, device_id: str, **values: object
) -> None:
    await conn.execute(
        update(e2ee_devices)
        .where(e2ee_devices.c.user_id == user_id, e2ee_devices.c.device_id == device_id)
        .values(**values)
    )


# --------------------------------------------------------------------------
# Onboarding sessions
# --------------------------------------------------------------------------


async def insert_session(conn: AsyncConnection, session: SessionRow) -> None:
    await conn.execute(
        insert(e2ee_onboarding_sessions).values(
            {name: getattr(session, name) for name in _names(SessionRow)}
        )
    )


async def get_session(conn: AsyncConnection, session_id: str) -> SessionRow | None:
    row = (
        await conn.execute(
            select(*_SESSION_COLUMNS).where(e2ee_onboarding_sessions.c.id == session_id)
        )
    ).first()
    return SessionRow(*row) if row is not None else None


async def open_sessions(conn: AsyncConnection, user_id: str) -> dict[str, SessionRow]:
    """The newest unclosed session of each device of the user, by device id."""
    rows = await conn.execute(
        select(*_SESSION_COLUMNS)
        .where(
            e2ee_onboarding_sessions.c.user_id == user_id,
            e2ee_onboarding_sessions.c.closed_at.is_(None),
        )
        .order_by(e2ee_onboarding_sessions.c.created_at)
    )
    out: dict[str, SessionRow] = {}
    for row in rows:
        session = SessionRow(*row)
        out[session.device_id] = session
    return out


async def close_sessions(conn: AsyncConnection, user_id: str, device_id: str, now: int) -> None:
    await conn.execute(
        update(e2ee_onboarding_sessions)
        .where(
            e2ee_onboarding_sessions.c.user_id == user_id,
            e2ee_onboarding_sessions.c.device_id == device_id,
            e2ee_onboarding_sessions.c.closed_at.is_(None),
        )
        .values(closed_at=now)
    )


# --------------------------------------------------------------------------
# Wrapped UMKs
# --------------------------------------------------------------------------


async def get_wrapped_umk(
    conn: AsyncConnection, user_id: str, device_id: str
) -> WrappedUmkRow | None:
    row = (
        await conn.execute(
            select(*_WRAPPED_COLUMNS).where(
                e2ee_wrapped_umks.c.user_id == user_id, e2ee_wrapped_umks.c.device_id == device_id
            )
        )
    ).first()
    return WrappedUmkRow(*row) if row is not None else None


async def put_wrapped_umk(conn: AsyncConnection, blob: WrappedUmkRow) -> None:
    """Replace the device's blob (delete then insert: portable across both databases)."""
    await delete_wrapped_umk(conn, blob.user_id, blob.device_id)
    await conn.execute(
        insert(e2ee_wrapped_umks).values(
            {name: getattr(blob, name) for name in _names(WrappedUmkRow)}
        )
    )


async def delete_wrapped_umk(conn: AsyncConnection, user_id: str, device_id: str) -> None:
    await conn.execute(
        delete(e2ee_wrapped_umks).where(
            e2ee_wrapped_umks.c.user_id == user_id, e2ee_wrapped_umks.c.device_id == device_id
        )
    )


# --------------------------------------------------------------------------
# Activation attempts
# --------------------------------------------------------------------------


async def activation_attempts_since(conn: AsyncConnection, user_id: str, since: int) -> list[int]:
    """Times of the user's attempts at or after ``since``, oldest first."""
    rows = await conn.execute(
        select(e2ee_activation_attempts.c.attempted_at)
        .where(
            e2ee_activation_attempts.c.user_id == user_id,
            e2ee_activation_attempts.c.attempted_at >= since,
        )
        .order_by(e2ee_activation_attempts.c.attempted_at)
    )
    return [int(value) for value in rows.scalars()]


async def record_activation_attempt(
    conn: AsyncConnection, user_id: str, now: int, prune_before: int
) -> None:
    # Old attempts no longer count; dropping them keeps the table small.
    await conn.execute(
        delete(e2ee_activation_attempts).where(
            e2ee_activation_attempts.c.user_id == user_id,
            e2ee_activation_attempts.c.attempted_at < prune_before,
        )
    )
    await conn.execute(insert(e2ee_activation_attempts).values(user_id=user_id, attempted_at=now))
