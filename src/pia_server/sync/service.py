"""Sync logic: push (last-write-wins or server-wins, tombstones, quotas), pull, status, events.

Knows no HTTP. One push is one write transaction that starts by locking the user's
``sync_state`` row, so two devices of one user pushing at once are applied one after the other
and never lose a change; change sequences and change times are allocated under that lock, so
they grow in commit order and a pull (which sees a committed prefix) never skips a change.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.core.audit import RequestOrigin, audit_events, record_event
from pia_server.core.config import Settings
from pia_server.core.database import Database
from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks
from pia_server.e2ee import storage as e2ee_storage
from pia_server.sync import storage
from pia_server.sync.errors import e2ee_required, invalid_cursor, quota_exceeded
from pia_server.sync.keys import SecretCipher
from pia_server.sync.pull_marks import PullMarks
from pia_server.sync.schemas import (
    COLLECTION_TYPES,
    EMPTY_GUID,
    ENTITY_BY_NAME,
    ENTITY_TYPES,
    SETTINGS_ID,
    DeviceSeen,
    EntityDto,
    EntityStatus,
    EntityType,
    IdMapping,
    QuotaLimits,
    QuotaUsage,
    SyncConflict,
    SyncEvent,
    SyncEventsResponse,
    SyncPushResponse,
    SyncQuotaResponse,
    SyncStatusResponse,
    has_plaintext_content,
)

# How often (at most) a pull records "last pulled at": a pull is a read; this write is rare.
_PULL_MARK_INTERVAL = 60 * TICKS_PER_SECOND
_CURSOR_PREFIX = "c1."


@dataclass(slots=True)
class _Incoming:
    et: EntityType
    entity_id: str
    item: EntityDto
    ts: int
    _payload: str | None = None
    key: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.et.name, self.entity_id)

    @property
    def encrypted(self) -> bool:
        return getattr(self.item, "encrypted_payload", None) is not None

    def payload(self) -> str:
        if self._payload is None:
            exclude = {self.et.secret_field} if self.et.secret_field else None
            self._payload = self.item.model_dump_json(by_alias=True, exclude=exclude)
        return self._payload

    def secret(self) -> str | None:
        if self.et.secret_field is None:
            return None
        value = getattr(self.item, self.et.secret_field)
        return value if isinstance(value, str) and value else None


@dataclass(slots=True)
class _Write:
    et: EntityType
    entity_id: str
    payload: str
    secret: str | None  # plaintext until written
    entity_ts: int
    deleted: bool
    deleted_at: int | None
    encrypted: bool

    @property
    def size(self) -> int:
        return len(self.payload.encode()) + (len(self.secret.encode()) if self.secret else 0)


@dataclass(slots=True)
class _Conflict:
    et: EntityType
    entity_id: str
    resolution: str
    reason: str
    # Whether the stored version is shown (not for tombstones).
    show_server: bool = True
    server_version: dict[str, Any] | None = None


@dataclass(slots=True)
class PullResult:
    body: bytes = b""
    etag: str = ""
    not_modified: bool = False
    records: int = 0


@dataclass(slots=True)
class _Plan:
    writes: dict[tuple[str, str], _Write] = field(default_factory=dict)
    conflicts: list[_Conflict] = field(default_factory=list)
    unchanged: int = 0


def encode_cursor(seq: int) -> str:
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> int:
    if not text.startswith(_CURSOR_PREFIX):
        raise invalid_cursor()
    body = text[len(_CURSOR_PREFIX) :]
    try:
        value = int(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid_cursor() from None
    if value < 0:
        raise invalid_cursor()
    return value


class SyncService:
    def __init__(self, db: Database, settings: Settings, cipher: SecretCipher) -> None:
        self.db = db
        self.settings = settings
        self.cipher = cipher
        # The server clock (ticks); a simulation may replace it.
        self.clock: Callable[[], int] = now_ticks
        self.pull_marks = PullMarks(db)

    # ------------------------------------------------------------------ push

    def _collect(
        self, request: Any
    ) -> tuple[dict[tuple[str, str], _Incoming], list[tuple[EntityType, str]], list[IdMapping]]:
        incoming: dict[tuple[str, str], _Incoming] = {}
        deletes: list[tuple[EntityType, str]] = []
        mappings: list[IdMapping] = []

        def add(entry: _Incoming) -> None:
            # The same id twice in one push: the newer one (the later one on a tie) counts.
            key = entry.key
            previous = incoming.get(key)
            if previous is None or entry.ts >= previous.ts:
                incoming[key] = entry

        for et in ENTITY_TYPES:
            value = getattr(request, et.attr)
            if et.singleton:
                if value is not None:
                    add(_Incoming(et, SETTINGS_ID, value, et.timestamp(value)))
                continue
            for index, item in enumerate(getattr(value, et.items_key)):
                if item.id == EMPTY_GUID:
                    new_id = uuid4()
                    mappings.append(
                        IdMapping(
                            entity=et.name, index=index, client_id=EMPTY_GUID, server_id=new_id
                        )
                    )
                    item.id = new_id
                add(_Incoming(et, str(item.id), item, et.timestamp(item)))
            deletes.extend((et, str(gid)) for gid in value.deleted if gid != EMPTY_GUID)
        return incoming, deletes, mappings

    async def push(self, user_id: str, request: Any, origin: RequestOrigin) -> SyncPushResponse:
        incoming, deletes, mappings = self._collect(request)
        # Judged by the content, never by the flag: a client cannot opt out by claiming encryption.
        plaintext = any(has_plaintext_content(entry.et, entry.item) for entry in incoming.values())
        device_id = request.device_id or None
        async with self.db.write() as conn:
            if plaintext and await e2ee_storage.is_e2ee_enabled(conn, user_id):
                raise e2ee_required()
            state = await storage.lock_state(conn, user_id)
            now = self.clock()
            ids = sorted({key[1] for key in incoming} | {entity_id for _, entity_id in deletes})
            meta = await storage.fetch_meta(conn, user_id, ids)
            plan = await self._plan(conn, user_id, request, incoming, deletes, meta, now)
            await self._check_quota(conn, user_id, plan, meta)

            writes = list(plan.writes.values())
            base = max(now, state.last_changed_at + 1)
            rows = [
                self._row(user_id, w, seq=state.last_seq + 1 + i, changed_at=base + i)
                for i, w in enumerate(writes)
            ]
            await storage.write_records(conn, rows)
            await storage.add_usage(conn, user_id, self._usage_deltas(writes, meta))
            last_changed = base + len(writes) - 1 if writes else state.last_changed_at
            await storage.save_state(
                conn,
                user_id,
                last_seq=state.last_seq + len(writes),
                last_changed_at=last_changed,
                last_push_at=now,
            )
            if device_id:
                await storage.touch_sync_device(conn, user_id, device_id, now)
                await e2ee_storage.touch_device(conn, user_id, device_id)
            await self._audit(conn, user_id, origin, device_id, writes, plan, request)

        return SyncPushResponse(
            server_timestamp=max(now, last_changed),
            conflicts=[self._conflict_dto(c) for c in plan.conflicts],
            id_mappings=mappings,
            upserted=sum(1 for w in writes if not w.deleted),
            deleted=sum(1 for w in writes if w.deleted),
            unchanged=plan.unchanged,
        )

    async def _plan(
        self,
        conn: AsyncConnection,
        user_id: str,
        request: Any,
        incoming: dict[tuple[str, str], _Incoming],
        deletes: list[tuple[EntityType, str]],
        meta: dict[tuple[str, str], storage.StoredMeta],
        now: int,
    ) -> _Plan:
        plan = _Plan()
        server_wins = self.settings.sync.conflict_strategy == "server-wins"
        last_sync = request.last_sync_timestamp or 0
        # Records whose stored payload we need: to compare content, or to show in a conflict.
        compare: list[_Incoming] = []

        for key, entry in incoming.items():
            stored = meta.get(key)
            if stored is None:
                plan.writes[key] = self._upsert_write(entry)
            elif stored.deleted:
                if entry.ts > (stored.deleted_at or 0):
                    plan.writes[key] = self._upsert_write(entry)  # a newer edit revives it
                else:
                    plan.conflicts.append(
                        _Conflict(
                            entry.et,
                            entry.entity_id,
                            "deleted",
                            "the record was deleted after this version",
                            show_server=False,
                        )
                    )
            elif entry.et.append_only:
                # Sessions never change; a differing plaintext copy is worth reporting.
                if not entry.encrypted and not stored.encrypted:
                    compare.append(entry)
                else:
                    plan.unchanged += 1
            elif entry.ts > stored.entity_ts:
                if server_wins and stored.changed_at > last_sync:
                    plan.conflicts.append(
                        _Conflict(
                            entry.et,
                            entry.entity_id,
                            "server-wins",
                            "the record changed on the server after lastSyncTimestamp",
                        )
                    )
                elif entry.et.compare_content and not entry.encrypted and not stored.encrypted:
                    compare.append(entry)
                else:
                    plan.writes[key] = self._upsert_write(entry)
                    if stored.changed_at > last_sync and last_sync > 0:
                        plan.conflicts.append(
                            _Conflict(
                                entry.et,
                                entry.entity_id,
                                "client-wins",
                                "newer than the server's version, which changed after "
                                "lastSyncTimestamp",
                            )
                        )
            elif entry.ts == stored.entity_ts:
                plan.unchanged += 1  # the early client's 5-minute full re-send
            else:
                plan.conflicts.append(
                    _Conflict(
                        entry.et,
                        entry.entity_id,
                        "server-wins",
                        "the server has a newer version (last-write-wins)",
                    )
                )

        for et, entity_id in deletes:
            key = (et.name, entity_id)
            stored = meta.get(key)
            if stored is not None and stored.deleted:
                plan.writes.pop(key, None)
                continue
            if server_wins and stored is not None and stored.changed_at > last_sync:
                plan.writes.pop(key, None)
                plan.conflicts.append(
                    _Conflict(
                        et,
                        entity_id,
                        "server-wins",
                        "the record changed on the server after lastSyncTimestamp",
                    )
                )
                continue
            # The tombstone beats every version the server has seen, whatever the clocks say.
            floor = stored.entity_ts + 1 if stored is not None else 0
            pending = plan.writes.get(key)
            if pending is not None:
                floor = max(floor, pending.entity_ts + 1)
            deleted_at = max(now, floor)
            plan.writes[key] = _Write(et, entity_id, "", None, deleted_at, True, deleted_at, False)

        wanted = [entry.key for entry in compare]
        wanted += [(c.et.name, c.entity_id) for c in plan.conflicts if c.show_server]
        payloads = await storage.fetch_payloads(conn, user_id, wanted) if wanted else {}

        for entry in compare:
            stored_payload = payloads.get(entry.key, ("", None))[0]
            if entry.et.append_only:
                plan.unchanged += 1
                if stored_payload != entry.payload():
                    plan.conflicts.append(
                        _Conflict(
                            entry.et,
                            entry.entity_id,
                            "server-wins",
                            "sessions are immutable; the stored copy is kept",
                        )
                    )
            elif _same_content(stored_payload, entry):
                plan.unchanged += 1
            else:
                plan.writes[entry.key] = self._upsert_write(entry)
        for conflict in plan.conflicts:
            if conflict.show_server:
                found = payloads.get((conflict.et.name, conflict.entity_id))
                if found and found[0]:
                    conflict.server_version = json.loads(found[0])
        return plan

    @staticmethod
    def _upsert_write(entry: _Incoming) -> _Write:
        return _Write(
            entry.et,
            entry.entity_id,
            entry.payload(),
            entry.secret(),
            entry.ts,
            False,
            None,
            entry.encrypted,
        )

    def _row(self, user_id: str, w: _Write, *, seq: int, changed_at: int) -> dict[str, Any]:
        secret = (
            self.cipher.encrypt(w.secret, user_id, w.et.name, w.entity_id) if w.secret else None
        )
        return {
            "user_id": user_id,
            "entity_id": w.entity_id,
            "entity": w.et.name,
            "payload": w.payload,
            "secret": secret,
            "entity_ts": w.entity_ts,
            "changed_at": changed_at,
            "seq": seq,
            "deleted": w.deleted,
            "deleted_at": w.deleted_at,
            "size": w.size,
            "encrypted": w.encrypted,
        }

    @staticmethod
    def _usage_deltas(
        writes: Sequence[_Write], meta: dict[tuple[str, str], storage.StoredMeta]
    ) -> dict[str, tuple[int, int]]:
        deltas: dict[str, tuple[int, int]] = {}
        for w in writes:
            stored = meta.get((w.et.name, w.entity_id))
            records, size = deltas.get(w.et.name, (0, 0))
            if stored is not None and not stored.deleted:
                records, size = records - 1, size - stored.size
            if not w.deleted:
                records, size = records + 1, size + w.size
            deltas[w.et.name] = (records, size)
        return deltas

    async def _check_quota(
        self,
        conn: AsyncConnection,
        user_id: str,
        plan: _Plan,
        meta: dict[tuple[str, str], storage.StoredMeta],
    ) -> None:
        quota = self.settings.quota
        errors: list[dict[str, Any]] = []
        for w in plan.writes.values():
            if not w.deleted and w.size > quota.max_record_bytes:
                errors.append(
                    {
                        "limit": "max_record_bytes",
                        "entity": w.et.name,
                        "id": w.entity_id,
                        "current": w.size,
                        "max": quota.max_record_bytes,
                        "message": f"{w.et.name} record {w.entity_id} is {w.size} bytes",
                    }
                )
        deltas = self._usage_deltas(list(plan.writes.values()), meta)
        if any(records > 0 or size > 0 for records, size in deltas.values()):
            usage = await storage.read_usage(conn, user_id)
            for entity, (d_records, _) in deltas.items():
                if ENTITY_BY_NAME[entity].singleton or d_records <= 0:
                    continue
                current = usage.get(entity, (0, 0))[0]
                limit = quota.records_per_type.get(entity, quota.max_records_per_type)
                if current + d_records > limit:
                    errors.append(
                        {
                            "limit": "records_per_type",
                            "entity": entity,
                            "current": current,
                            "requested": current + d_records,
                            "max": limit,
                            "message": f"at most {limit} {entity} records",
                        }
                    )
            total = sum(size for _, size in usage.values())
            d_total = sum(size for _, size in deltas.values())
            if d_total > 0 and total + d_total > quota.max_total_bytes:
                errors.append(
                    {
                        "limit": "max_total_bytes",
                        "current": total,
                        "requested": total + d_total,
                        "max": quota.max_total_bytes,
                        "message": f"at most {quota.max_total_bytes} bytes of synced data",
                    }
                )
        if errors:
            raise quota_exceeded(errors)

    async def _audit(
        self,
        conn: AsyncConnection,
        user_id: str,
        origin: RequestOrigin,
        device_id: str | None,
        writes: Sequence[_Write],
        plan: _Plan,
        request: Any,
    ) -> None:
        upserted: dict[str, int] = {}
        deleted: dict[str, int] = {}
        for w in writes:
            target = deleted if w.deleted else upserted
            target[w.et.name] = target.get(w.et.name, 0) + 1
        if not writes and not plan.conflicts:
            return  # a re-send that changed nothing is not worth an audit row
        await record_event(
            conn,
            "sync.push",
            user_id=user_id,
            origin=origin,
            device_id=device_id,
            details={
                "upserted": upserted,
                "deleted": deleted,
                "unchanged": plan.unchanged,
                "conflicts": len(plan.conflicts),
                "e2ee": bool(request.is_e2ee_encrypted),
            },
        )
        if deleted:
            await record_event(
                conn,
                "sync.delete",
                user_id=user_id,
                origin=origin,
                device_id=device_id,
                details={"deleted": deleted},
            )

    @staticmethod
    def _conflict_dto(c: _Conflict) -> SyncConflict:
        return SyncConflict(
            entity=c.et.name,
            id=None if c.et.singleton else UUID(c.entity_id),
            server_version=c.server_version,
            resolution=c.resolution,
            reason=c.reason,
        )

    # ------------------------------------------------------------------ pull

    async def pull(
        self,
        user_id: str,
        *,
        since: int | None,
        limit: int | None,
        cursor: str | None,
        if_none_match: str | None,
    ) -> PullResult:
        after_seq = decode_cursor(cursor) if cursor else None
        paged = limit is not None
        page = limit or 0
        position = f"c{after_seq}" if after_seq is not None else f"t{since or 0}"
        now = self.clock()
        # No snapshot needed: a push landing between these reads only adds later change times
        # and sequences, which the cursor and the ETag below already allow for.
        async with self.db.hot_read() as conn:
            state = await storage.read_state(conn, user_id)
            last_seq = state.last_seq if state else 0
            etag = f'W/"s{last_seq}-{position}-l{page}"'
            if if_none_match and etag in {t.strip() for t in if_none_match.split(",")}:
                return PullResult(etag=etag, not_modified=True)
            fetch = page + 1 if paged else None
            if after_seq is not None:
                rows = await storage.changes_after_seq(conn, user_id, after_seq, fetch)
            else:
                lower = since or 0
                if lower and not paged:
                    # The early client's cursor is its own clock: reach back by the overlap.
                    lower = max(
                        0, lower - self.settings.sync.pull_overlap_seconds * TICKS_PER_SECOND
                    )
                rows = await storage.changes_since_time(conn, user_id, lower, fetch)
            has_more = False
            if paged and len(rows) > page:
                following = rows[page]
                rows = rows[:page]
                last = rows[-1]
                if following.changed_at == last.changed_at:
                    rows += await storage.rest_of_group(conn, user_id, last.changed_at, last.seq)
                    has_more = await storage.has_changes_after(conn, user_id, rows[-1].seq)
                else:
                    has_more = True
        if has_more:
            server_ts = rows[-1].changed_at
            next_seq = rows[-1].seq
        else:
            server_ts = max([state.last_changed_at if state else 0, *(r.changed_at for r in rows)])
            next_seq = max([last_seq, after_seq or 0, *(r.seq for r in rows)])
        body = self._pull_body(user_id, rows, server_ts, has_more, encode_cursor(next_seq))
        last_pull = self._last_pull(user_id, state)
        if state is not None and (last_pull is None or now - last_pull > _PULL_MARK_INTERVAL):
            self.pull_marks.note(user_id, now)
        return PullResult(body=body, etag=etag, records=len(rows))

    def _pull_body(
        self,
        user_id: str,
        rows: Sequence[storage.ChangedRow],
        server_ts: int,
        has_more: bool,
        next_cursor: str,
    ) -> bytes:
        upserted: dict[str, list[str]] = {et.name: [] for et in COLLECTION_TYPES}
        deleted: dict[str, list[str]] = {et.name: [] for et in COLLECTION_TYPES}
        settings_json = "null"
        for row in rows:
            et = ENTITY_BY_NAME.get(row.entity)
            if et is None:
                continue  # a type this version does not know
            if et.singleton:
                if not row.deleted:
                    settings_json = row.payload
            elif row.deleted:
                deleted[et.name].append(json.dumps(row.entity_id))
            else:
                payload = row.payload
                if et.secret_field is not None:
                    payload = self._with_secret(user_id, et, row, payload)
                upserted[et.name].append(payload)
        parts = [
            f'{{"serverTimestamp":"{format_timestamp(server_ts)}"',
            f'"hasMore":{"true" if has_more else "false"}',
            f'"nextCursor":{json.dumps(next_cursor)}',
            f'"settings":{settings_json}',
        ]
        for et in COLLECTION_TYPES:
            parts.append(
                f'"{et.name}":{{"{et.items_key}":[{",".join(upserted[et.name])}],'
                f'"deleted":[{",".join(deleted[et.name])}]}}'
            )
        return (",".join(parts) + "}").encode()

    def _with_secret(
        self, user_id: str, et: EntityType, row: storage.ChangedRow, payload: str
    ) -> str:
        value = (
            self.cipher.decrypt(row.secret, user_id, et.name, row.entity_id) if row.secret else None
        )
        # The payload is a JSON object written by pydantic: append the key before its brace.
        key = "apiKey"
        return f"{payload[:-1]},{json.dumps(key)}:{json.dumps(value, ensure_ascii=False)}}}"

    # ------------------------------------------------------------------ status, events, quota

    async def status(self, user_id: str) -> SyncStatusResponse:
        async with self.db.hot_read(snapshot=True) as conn:
            rows = await storage.read_status(conn, user_id)
            # The e2ee domain decides what "enabled" means (one Core statement).
            e2ee = await e2ee_storage.is_e2ee_enabled(conn, user_id)
        state, usage, tombstones, devices = rows.state, rows.usage, rows.tombstones, rows.devices
        entities = {
            et.name: EntityStatus(
                records=usage.get(et.name, (0, 0))[0],
                bytes=usage.get(et.name, (0, 0))[1],
                tombstones=tombstones.get(et.name, (0, 0))[0],
            )
            for et in ENTITY_TYPES
        }
        return SyncStatusResponse(
            server_time=self.clock(),
            last_push_at=state.last_push_at if state else None,
            last_pull_at=self._last_pull(user_id, state),
            change_sequence=state.last_seq if state else 0,
            entities=entities,
            total_records=sum(e.records for e in entities.values()),
            total_bytes=sum(e.bytes for e in entities.values()),
            devices=[
                DeviceSeen(device_id=d[0], first_seen_at=d[1], last_seen_at=d[2], pushes=d[3])
                for d in devices
            ],
            conflict_strategy=self.settings.sync.conflict_strategy,
            e2ee_enabled=e2ee,
        )

    def _last_pull(self, user_id: str, state: storage.SyncState | None) -> int | None:
        """The stored mark, or this instance's newer one not yet written."""
        stored = state.last_pull_at if state else None
        pending = self.pull_marks.pending(user_id)
        if pending is None:
            return stored
        return pending if stored is None else max(stored, pending)

    async def events(self, user_id: str, limit: int, before: int | None) -> SyncEventsResponse:
        t = audit_events.c
        stmt = select(
            t.id, t.event, t.created_at, t.ip, t.user_agent, t.device_id, t.provider, t.details
        ).where(t.user_id == user_id)
        if before is not None:
            stmt = stmt.where(t.id < before)
        stmt = stmt.order_by(t.id.desc()).limit(limit + 1)
        async with self.db.read() as conn:
            rows = list(await conn.execute(stmt))
        has_more = len(rows) > limit
        rows = rows[:limit]
        events = [
            SyncEvent(
                id=r[0],
                event=r[1],
                created_at=r[2],
                ip=r[3],
                user_agent=r[4],
                device_id=r[5],
                provider=r[6],
                details=_json_object(r[7]),
            )
            for r in rows
        ]
        return SyncEventsResponse(
            events=events, has_more=has_more, next_before=events[-1].id if has_more else None
        )

    async def quota(self, user_id: str) -> SyncQuotaResponse:
        async with self.db.read() as conn:
            usage = await storage.read_usage(conn, user_id)
        quota = self.settings.quota
        return SyncQuotaResponse(
            limits=QuotaLimits(
                records_per_type={
                    et.name: quota.records_per_type.get(et.name, quota.max_records_per_type)
                    for et in COLLECTION_TYPES
                },
                max_record_bytes=quota.max_record_bytes,
                max_total_bytes=quota.max_total_bytes,
            ),
            usage=QuotaUsage(
                records_per_type={
                    et.name: usage.get(et.name, (0, 0))[0] for et in COLLECTION_TYPES
                },
                total_bytes=sum(size for _, size in usage.values()),
            ),
        )


def _same_content(stored_payload: str, entry: _Incoming) -> bool:
    """Plaintext content equal apart from the entity's own timestamp field."""
    if not stored_payload:
        return False
    stored = json.loads(stored_payload)
    fresh = json.loads(entry.payload())
    for name in ("modifiedAt", "updatedAt"):
        stored.pop(name, None)
        fresh.pop(name, None)
    return bool(stored == fresh)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
