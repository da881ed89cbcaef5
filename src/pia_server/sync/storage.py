"""Sync tables and queries (SQLAlchemy Core).

One generic store holds every entity type (``sync_records``): the DTO as stored (JSON text),
the entity's own timestamp for last-write-wins, and the server's change time and per-user change
sequence for pulls. ``sync_state`` is the per-user row whose lock serializes one user's pushes and
whose counters allocate change sequences; ``sync_usage`` keeps quota counters up to date so that
no push or status has to aggregate a user's whole data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from pia_server.core.database import metadata
from pia_server.core.rawsql import RawQuery, ReadConnection


def _user_fk(table: str) -> ForeignKey:
    return ForeignKey("users.id", ondelete="CASCADE", name=f"fk_{table}_user_id_users")


sync_records = Table(
    "sync_records",
    metadata,
    Column("user_id", String(36), _user_fk("sync_records"), nullable=False),
    # The entity id first: a push looks up all its ids with one IN list, whatever their types.
    Column("entity_id", String(36), nullable=False),
    Column("entity", String(32), nullable=False),
    # The DTO as stored (camelCase JSON); empty for a tombstone.
    Column("payload", Text, nullable=False),
    # A provider's plaintext API key, AES-GCM encrypted with the server key (never in payload).
    Column("secret", Text, nullable=True),
    # The entity's own timestamp (ticks) that last-write-wins compares.
    Column("entity_ts", BigInteger, nullable=False),
    # Server change time (ticks) and per-user change sequence: what pulls select on.
    Column("changed_at", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("deleted_at", BigInteger, nullable=True),
    Column("size", Integer, nullable=False),
    # Stored end-to-end encrypted (the server cannot read its content).
    Column("encrypted", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("user_id", "entity_id", "entity", name="pk_sync_records"),
    Index("ix_sync_records_user_id_seq", "user_id", "seq", unique=True),
    Index("ix_sync_records_user_id_changed_at_seq", "user_id", "changed_at", "seq"),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("user_id", String(36), _user_fk("sync_state"), primary_key=True),
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("last_changed_at", BigInteger, nullable=False, default=0),
    Column("last_push_at", BigInteger, nullable=True),
    Column("last_pull_at", BigInteger, nullable=True),
)

sync_usage = Table(
    "sync_usage",
    metadata,
    Column("user_id", String(36), _user_fk("sync_usage"), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("records", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("user_id", "entity", name="pk_sync_usage"),
)

sync_devices = Table(
    "sync_devices",
    metadata,
    Column("user_id", String(36), _user_fk("sync_devices"), nullable=False),
    Column("device_id", String(128), nullable=False),
    Column("first_seen_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Column("pushes", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("user_id", "device_id", name="pk_sync_devices"),
)


def _insert(conn: AsyncConnection, table: Table) -> Any:
    """The dialect's INSERT (both have ON CONFLICT)."""
    return _insert_for(conn.dialect.name, table)


def _insert_for(dialect: str, table: Table) -> Any:
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


_T = TypeVar("_T")


def _per_dialect(build: Callable[[str], _T]) -> Callable[[AsyncConnection], _T]:
    """A statement built once per dialect, its values bound at execution.

    Building a Core statement (and its cache key) on every push cost more than running it.
    """
    built: dict[str, _T] = {}

    def get(conn: AsyncConnection) -> _T:
        name = conn.dialect.name
        found = built.get(name)
        if found is None:
            found = built[name] = build(name)
        return found

    return get


@dataclass(frozen=True, slots=True)
class SyncState:
    last_seq: int
    last_changed_at: int
    last_push_at: int | None
    last_pull_at: int | None


@_per_dialect
def _lock_state_stmt(dialect: str) -> Any:
    # Bound names differ from the column names: SQLAlchemy reserves those in VALUES and SET.
    stmt = _insert_for(dialect, sync_state).values(
        user_id=bindparam("uid"), last_seq=0, last_changed_at=0
    )
    return stmt.on_conflict_do_update(
        index_elements=[sync_state.c.user_id],
        # A no-op update: its point is the row lock (and RETURNING the current values).
        set_={"last_seq": sync_state.c.last_seq},
    ).returning(
        sync_state.c.last_seq,
        sync_state.c.last_changed_at,
        sync_state.c.last_push_at,
        sync_state.c.last_pull_at,
    )


async def lock_state(conn: AsyncConnection, user_id: str) -> SyncState:
    """Create or lock the user's state row and return it.

    ON CONFLICT DO UPDATE locks the row on PostgreSQL until the transaction ends, so one user's
    pushes queue up here; SQLite writers are already serialized by BEGIN IMMEDIATE.
    """
    row = (await conn.execute(_lock_state_stmt(conn), {"uid": user_id})).one()
    return SyncState(row[0], row[1], row[2], row[3])


_SAVE_STATE = (
    update(sync_state)
    .where(sync_state.c.user_id == bindparam("uid"))
    .values(
        last_seq=bindparam("new_seq"),
        last_changed_at=bindparam("new_changed_at"),
        last_push_at=bindparam("new_push_at"),
    )
)
_MARK_PULLED = (
    update(sync_state)
    .where(
        sync_state.c.user_id == bindparam("uid"),
        # Another instance may have written a later mark already.
        or_(sync_state.c.last_pull_at.is_(None), sync_state.c.last_pull_at < bindparam("when")),
    )
    .values(last_pull_at=bindparam("when"))
)


async def save_state(
    conn: AsyncConnection,
    user_id: str,
    *,
    last_seq: int,
    last_changed_at: int,
    last_push_at: int,
) -> None:
    params = {
        "uid": user_id,
        "new_seq": last_seq,
        "new_changed_at": last_changed_at,
        "new_push_at": last_push_at,
    }
    await conn.execute(_SAVE_STATE, params)


async def mark_pulled(conn: AsyncConnection, marks: dict[str, int]) -> None:
    """Set ``last_pull_at`` of several users (user id -> ticks) in one statement."""
    rows = [{"uid": user_id, "when": when} for user_id, when in marks.items()]
    await conn.execute(_MARK_PULLED, rows)


# Reads on every pull and status request run on the bare driver (see core.rawsql).
_user_param: BindParameter[str] = bindparam("user_id", type_=String())
_STATE = RawQuery(
    select(
        sync_state.c.last_seq,
        sync_state.c.last_changed_at,
        sync_state.c.last_push_at,
        sync_state.c.last_pull_at,
    ).where(sync_state.c.user_id == _user_param)
)


async def read_state(conn: ReadConnection, user_id: str) -> SyncState | None:
    rows = await _STATE.all(conn, user_id=user_id)
    return SyncState(*rows[0]) if rows else None


@dataclass(slots=True)
class StoredMeta:
    """What a push needs to know of a stored record (no payload)."""

    entity_ts: int
    changed_at: int
    deleted: bool
    deleted_at: int | None
    size: int
    encrypted: bool


# Bind parameters per IN list: well under SQLite's and asyncpg's limits (32,766 / 32,767).
_IN_CHUNK = 2000


def _chunks(values: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _id_in(dialect: str) -> ColumnElement[bool]:
    """``entity_id IN (...)``; on PostgreSQL one array parameter (``= ANY``), one cached plan."""
    if dialect == "postgresql":
        array = bindparam("entity_ids", type_=postgresql.ARRAY(String(36)))
        return sync_records.c.entity_id == func.any(array)
    return sync_records.c.entity_id.in_(bindparam("entity_ids", expanding=True))


@_per_dialect
def _meta_stmt(dialect: str) -> Any:
    t = sync_records.c
    return select(
        t.entity,
        t.entity_id,
        t.entity_ts,
        t.changed_at,
        t.deleted,
        t.deleted_at,
        t.size,
        t.encrypted,
    ).where(t.user_id == bindparam("user_id"), _id_in(dialect))


@_per_dialect
def _payloads_stmt(dialect: str) -> Any:
    t = sync_records.c
    return select(t.entity, t.entity_id, t.payload, t.secret).where(
        t.user_id == bindparam("user_id"), _id_in(dialect)
    )


async def fetch_meta(
    conn: AsyncConnection, user_id: str, entity_ids: Sequence[str]
) -> dict[tuple[str, str], StoredMeta]:
    """Stored timestamps and flags of these ids (any type), keyed by ``(entity, id)``."""
    out: dict[tuple[str, str], StoredMeta] = {}
    stmt = _meta_stmt(conn)
    for chunk in _chunks(entity_ids):
        result = await conn.execute(stmt, {"user_id": user_id, "entity_ids": list(chunk)})
        for row in result:
            out[(row[0], row[1])] = StoredMeta(
                row[2], row[3], bool(row[4]), row[5], row[6], bool(row[7])
            )
    return out


async def fetch_payloads(
    conn: AsyncConnection, user_id: str, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str | None]]:
    """``(payload, secret)`` of these records, keyed by ``(entity, id)``."""
    out: dict[tuple[str, str], tuple[str, str | None]] = {}
    wanted = set(keys)
    ids = sorted({k[1] for k in keys})
    stmt = _payloads_stmt(conn)
    for chunk in _chunks(ids):
        result = await conn.execute(stmt, {"user_id": user_id, "entity_ids": list(chunk)})
        for row in result:
            if (row[0], row[1]) in wanted:
                out[(row[0], row[1])] = (row[2], row[3])
    return out


@_per_dialect
def _write_records_stmt(dialect: str) -> Any:
    stmt = _insert_for(dialect, sync_records)
    return stmt.on_conflict_do_update(
        index_elements=[sync_records.c.user_id, sync_records.c.entity_id, sync_records.c.entity],
        set_={
            name: stmt.excluded[name]
            for name in (
                "payload",
                "secret",
                "entity_ts",
                "changed_at",
                "seq",
                "deleted",
                "deleted_at",
                "size",
                "encrypted",
            )
        },
    )


async def write_records(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert or replace whole records (one statement, executemany)."""
    if rows:
        await conn.execute(_write_records_stmt(conn), rows)


async def read_usage(conn: AsyncConnection, user_id: str) -> dict[str, tuple[int, int]]:
    """Live records and bytes per entity type."""
    result = await conn.execute(
        select(sync_usage.c.entity, sync_usage.c.records, sync_usage.c.bytes).where(
            sync_usage.c.user_id == user_id
        )
    )
    return {row[0]: (int(row[1]), int(row[2])) for row in result}


@_per_dialect
def _add_usage_stmt(dialect: str) -> Any:
    stmt = _insert_for(dialect, sync_usage)
    return stmt.on_conflict_do_update(
        index_elements=[sync_usage.c.user_id, sync_usage.c.entity],
        set_={
            "records": sync_usage.c.records + stmt.excluded.records,
            "bytes": sync_usage.c.bytes + stmt.excluded.bytes,
        },
    )


async def add_usage(
    conn: AsyncConnection, user_id: str, deltas: dict[str, tuple[int, int]]
) -> None:
    rows = [
        {"user_id": user_id, "entity": entity, "records": records, "bytes": size}
        for entity, (records, size) in deltas.items()
        if records or size
    ]
    if rows:
        await conn.execute(_add_usage_stmt(conn), rows)


@_per_dialect
def _touch_device_stmt(dialect: str) -> Any:
    when = bindparam("when", type_=BigInteger())
    stmt = _insert_for(dialect, sync_devices).values(
        user_id=bindparam("uid"),
        device_id=bindparam("did"),
        first_seen_at=when,
        last_seen_at=when,
        pushes=1,
    )
    return stmt.on_conflict_do_update(
        index_elements=[sync_devices.c.user_id, sync_devices.c.device_id],
        set_={"last_seen_at": stmt.excluded.last_seen_at, "pushes": sync_devices.c.pushes + 1},
    )


async def touch_sync_device(conn: AsyncConnection, user_id: str, device_id: str, when: int) -> None:
    params = {"uid": user_id, "did": device_id, "when": when}
    await conn.execute(_touch_device_stmt(conn), params)


async def list_devices(conn: AsyncConnection, user_id: str) -> list[tuple[str, int, int, int]]:
    """``(device_id, first_seen_at, last_seen_at, pushes)``, most recently seen first."""
    result = await conn.execute(
        select(
            sync_devices.c.device_id,
            sync_devices.c.first_seen_at,
            sync_devices.c.last_seen_at,
            sync_devices.c.pushes,
        )
        .where(sync_devices.c.user_id == user_id)
        .order_by(sync_devices.c.last_seen_at.desc())
    )
    return [(r[0], r[1], r[2], r[3]) for r in result]


class ChangedRow(NamedTuple):
    # A tuple, not a frozen dataclass: a pull builds hundreds, four times faster this way.
    entity: str
    entity_id: str
    payload: str
    secret: str | None
    deleted: bool
    changed_at: int
    seq: int


_CHANGED_COLUMNS = (
    sync_records.c.entity,
    sync_records.c.entity_id,
    sync_records.c.payload,
    sync_records.c.secret,
    sync_records.c.deleted,
    sync_records.c.changed_at,
    sync_records.c.seq,
)


def _changed(rows: Iterable[Any]) -> list[ChangedRow]:
    return [ChangedRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]


_SINCE = (
    select(*_CHANGED_COLUMNS)
    .where(
        sync_records.c.user_id == _user_param,
        sync_records.c.changed_at >= bindparam("since", type_=BigInteger()),
    )
    .order_by(sync_records.c.changed_at, sync_records.c.seq)
)
_CHANGES_SINCE = RawQuery(_SINCE)
_CHANGES_SINCE_LIMITED = RawQuery(_SINCE.limit(bindparam("limit", type_=Integer())))


async def changes_since_time(
    conn: ReadConnection, user_id: str, since: int, limit: int | None
) -> list[ChangedRow]:
    """Records whose change time is at or after ``since``, in change order."""
    if limit is None:
        return _changed(await _CHANGES_SINCE.all(conn, user_id=user_id, since=since))
    rows = await _CHANGES_SINCE_LIMITED.all(conn, user_id=user_id, since=since, limit=limit)
    return _changed(rows)


_AFTER_SEQ = (
    select(*_CHANGED_COLUMNS)
    .where(
        sync_records.c.user_id == _user_param,
        sync_records.c.seq > bindparam("after_seq", type_=BigInteger()),
    )
    .order_by(sync_records.c.seq)
)
_CHANGES_AFTER_SEQ = RawQuery(_AFTER_SEQ)
_CHANGES_AFTER_SEQ_LIMITED = RawQuery(_AFTER_SEQ.limit(bindparam("limit", type_=Integer())))
_REST_OF_GROUP = RawQuery(
    select(*_CHANGED_COLUMNS)
    .where(
        sync_records.c.user_id == _user_param,
        sync_records.c.changed_at == bindparam("changed_at", type_=BigInteger()),
        sync_records.c.seq > bindparam("after_seq", type_=BigInteger()),
    )
    .order_by(sync_records.c.seq)
)
_ANY_AFTER_SEQ = RawQuery(
    select(sync_records.c.seq)
    .where(
        sync_records.c.user_id == _user_param,
        sync_records.c.seq > bindparam("after_seq", type_=BigInteger()),
    )
    .limit(1)
)


async def changes_after_seq(
    conn: ReadConnection, user_id: str, after_seq: int, limit: int | None
) -> list[ChangedRow]:
    if limit is None:
        return _changed(await _CHANGES_AFTER_SEQ.all(conn, user_id=user_id, after_seq=after_seq))
    rows = await _CHANGES_AFTER_SEQ_LIMITED.all(
        conn, user_id=user_id, after_seq=after_seq, limit=limit
    )
    return _changed(rows)


async def rest_of_group(
    conn: ReadConnection, user_id: str, changed_at: int, after_seq: int
) -> list[ChangedRow]:
    """The records of one change time after ``after_seq`` (a page never splits a group)."""
    rows = await _REST_OF_GROUP.all(
        conn, user_id=user_id, changed_at=changed_at, after_seq=after_seq
    )
    return _changed(rows)


async def has_changes_after(conn: ReadConnection, user_id: str, after_seq: int) -> bool:
    return bool(await _ANY_AFTER_SEQ.all(conn, user_id=user_id, after_seq=after_seq))


async def find_record(
    conn: AsyncConnection, user_id: str, entity: str, entity_id: str
) -> tuple[str, bool, bool] | None:
    """``(payload, deleted, encrypted)`` of one record of this user."""
    t = sync_records.c
    row = (
        await conn.execute(
            select(t.payload, t.deleted, t.encrypted).where(
                t.user_id == user_id, t.entity_id == entity_id, t.entity == entity
            )
        )
    ).first()
    return None if row is None else (row[0], bool(row[1]), bool(row[2]))


async def count_records(conn: AsyncConnection, user_id: str) -> dict[str, tuple[int, int]]:
    """Tombstones per entity type (live counts come from ``sync_usage``)."""
    t = sync_records.c
    result = await conn.execute(
        select(t.entity, func.count(), func.coalesce(func.sum(t.size), 0))
        .where(t.user_id == user_id, t.deleted.is_(True))
        .group_by(t.entity)
    )
    return {r[0]: (int(r[1]), int(r[2])) for r in result}


# --- GET /api/sync/status: the five reads on the bare driver (see ``rawsql``) -------------------

_STATUS_USAGE = RawQuery(
    select(sync_usage.c.entity, sync_usage.c.records, sync_usage.c.bytes).where(
        sync_usage.c.user_id == _user_param
    )
)
_STATUS_TOMBSTONES = RawQuery(
    select(
        sync_records.c.entity,
        func.count(),
        func.coalesce(func.sum(sync_records.c.size), 0),
    )
    .where(sync_records.c.user_id == _user_param, sync_records.c.deleted.is_(True))
    .group_by(sync_records.c.entity)
)
_STATUS_DEVICES = RawQuery(
    select(
        sync_devices.c.device_id,
        sync_devices.c.first_seen_at,
        sync_devices.c.last_seen_at,
        sync_devices.c.pushes,
    )
    .where(sync_devices.c.user_id == _user_param)
    .order_by(sync_devices.c.last_seen_at.desc())
)


@dataclass(frozen=True, slots=True)
class StatusRows:
    state: SyncState | None
    usage: dict[str, tuple[int, int]]
    tombstones: dict[str, tuple[int, int]]
    devices: list[tuple[str, int, int, int]]


async def read_status(conn: ReadConnection, user_id: str) -> StatusRows:
    """What ``read_state``, ``read_usage``, ``count_records`` and ``list_devices`` return, read
    on the driver connection (the hot status route)."""
    state = await _STATE.all(conn, user_id=user_id)
    usage = await _STATUS_USAGE.all(conn, user_id=user_id)
    tombstones = await _STATUS_TOMBSTONES.all(conn, user_id=user_id)
    devices = await _STATUS_DEVICES.all(conn, user_id=user_id)
    first = state[0] if state else None
    return StatusRows(
        state=SyncState(first[0], first[1], first[2], first[3]) if first is not None else None,
        usage={r[0]: (int(r[1]), int(r[2])) for r in usage},
        tombstones={r[0]: (int(r[1]), int(r[2])) for r in tombstones},
        devices=[(r[0], r[1], r[2], r[3]) for r in devices],
    )
