"""Property: devices that behave like the real clients converge, lose nothing, revive nothing.

Two early-style devices (full-state push every cycle, no deletes, cursor = their own skewed clock,
``remote >= local`` on pull) and one later-style device (pushes only what it changed plus deletes,
pages with ``limit`` and uses the server's ``serverTimestamp`` as its cursor) edit and delete a
small pool of todos in random interleavings, with clocks skewed by up to three minutes.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from conftest import SettingsFactory, client_for, create_test_user, running_app
from pia_server.core.config import Settings
from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks, parse_timestamp
from sync.helpers import MIN_VALUE, push_body, todo

RECORD_IDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 6)]
_tick = itertools.count(1)


class SimClock:
    """Simulated time: the server's clock, and every device's (plus its skew)."""

    def __init__(self) -> None:
        self.now = now_ticks()

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * TICKS_PER_SECOND)

    def __call__(self) -> int:
        return self.now


@dataclass
class Device:
    sim: SimClock
    name: str
    skew_seconds: int
    later_style: bool
    local: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    pending_deletes: set[str] = field(default_factory=set)
    cursor: str = MIN_VALUE + ".0000000"

    def clock(self) -> int:
        # A unique tick per call, so that no two edits anywhere share a timestamp.
        return self.sim() + self.skew_seconds * TICKS_PER_SECOND + next(_tick)


@dataclass
class History:
    edits: dict[str, list[int]] = field(default_factory=dict)  # id -> updatedAt of every edit
    pushed: dict[str, set[int]] = field(default_factory=dict)  # id -> versions the server saw
    # id -> versions the server had seen when it was last deleted
    seen_at_delete: dict[str, set[int]] = field(default_factory=dict)


def _ts(item: dict[str, Any]) -> int:
    return parse_timestamp(item["updatedAt"])


async def _sync(
    client: httpx.AsyncClient, headers: dict[str, str], dev: Device, hist: History
) -> None:
    if dev.later_style:
        body = push_body(
            todos=[dev.local[i] for i in sorted(dev.dirty) if i in dev.local],
            deleted={"todos": sorted(dev.pending_deletes)},
            last_sync=dev.cursor,
            device_id=dev.name,
        )
    else:
        body = push_body(todos=list(dev.local.values()), device_id=dev.name, last_sync=dev.cursor)
    body["clientTimestamp"] = format_timestamp(dev.clock())
    response = await client.post("/api/sync/push", json=body, headers=headers)
    assert response.status_code == 200, response.text
    for item in body["todos"]["upserted"]:
        hist.pushed.setdefault(item["id"], set()).add(_ts(item))
    for gone in body["todos"]["deleted"]:
        hist.seen_at_delete[gone] = set(hist.pushed.get(gone, set()))
    dev.dirty.clear()
    dev.pending_deletes.clear()
    dev.sim.advance(1)

    pages: list[dict[str, Any]] = []
    if dev.later_style:
        since = dev.cursor
        for _ in range(50):
            page = (
                await client.get(
                    "/api/sync/pull", params={"since": since, "limit": 3}, headers=headers
                )
            ).json()
            pages.append(page)
            advanced = parse_timestamp(page["serverTimestamp"]) > parse_timestamp(since)
            since = page["serverTimestamp"]
            if not (page["hasMore"] and advanced):
                break
        dev.cursor = since
    else:
        response = await client.get("/api/sync/pull", params={"since": dev.cursor}, headers=headers)
        assert response.status_code == 200
        pages.append(response.json())
        dev.sim.advance(1)
        # The early client's cursor is its own clock, taken after the pull.
        dev.cursor = format_timestamp(dev.clock())
    for page in pages:
        for remote in page["todos"]["upserted"]:
            mine = dev.local.get(remote["id"])
            if mine is None or _ts(remote) >= _ts(mine):
                dev.local[remote["id"]] = remote
        for gone in page["todos"]["deleted"]:
            dev.local.pop(gone, None)
            dev.dirty.discard(gone)


_record = st.integers(0, len(RECORD_IDS) - 1)
_pause = st.integers(0, 400)  # seconds of simulated time before the operation
operation = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, 2), _record, _pause),
    st.tuples(st.just("delete"), st.just(2), _record, _pause),
    st.tuples(st.just("sync"), st.integers(0, 2), st.just(0), _pause),
)


Op = tuple[str, int, int, int]


async def _scenario(settings: Settings, skews: list[int], ops: list[Op]) -> None:
    async with running_app(settings) as app, client_for(app) as client:
        user = await create_test_user(app)
        sim = SimClock()
        app.state.ctx.domains["sync"].clock = sim
        devices = [
            Device(sim, "early-1", skews[0], later_style=False),
            Device(sim, "early-2", skews[1], later_style=False),
            Device(sim, "later", skews[2], later_style=True),
        ]
        hist = History()
        for op, d, r, pause in ops:
            sim.advance(pause)
            dev = devices[d]
            record_id = RECORD_IDS[r]
            if op == "edit":
                stamp = dev.clock()
                dev.local[record_id] = todo(
                    record_id, title=f"{dev.name}@{stamp}", updated=format_timestamp(stamp)
                )
                dev.dirty.add(record_id)
                hist.edits.setdefault(record_id, []).append(stamp)
            elif op == "delete":
                if record_id in dev.local:
                    del dev.local[record_id]
                    dev.dirty.discard(record_id)
                    dev.pending_deletes.add(record_id)
            else:
                await _sync(client, user.headers, dev, hist)
        # Let everyone sync until quiet.
        for _ in range(2):
            for dev in devices:
                sim.advance(30)
                await _sync(client, user.headers, dev, hist)

        server = (await client.get("/api/sync/pull", headers=user.headers)).json()
        server_state = {t["id"]: t for t in server["todos"]["upserted"]}
        for dev in devices:
            assert dev.local == server_state, dev.name
        for record_id, stamps in hist.edits.items():
            if record_id not in hist.seen_at_delete:
                # Never deleted: present everywhere, with the newest edit.
                assert record_id in server_state, "a record was lost"
                assert _ts(server_state[record_id]) == max(stamps)
            elif record_id in server_state:
                # Deleted: it may only come back with an edit the server had not seen at the delete.
                seen = hist.seen_at_delete[record_id]
                assert all(_ts(server_state[record_id]) > s for s in seen), (
                    "a deleted record revived"
                )


@hyp_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    skews=st.lists(st.integers(-180, 180), min_size=3, max_size=3),
    ops=st.lists(operation, min_size=4, max_size=20),
)
def test_devices_converge(make_settings: SettingsFactory, skews: list[int], ops: list[Op]) -> None:
    # A fresh app (and user) per example on the same database; plenty of sync budget.
    settings = make_settings(rate_limits={"sync": "100000/minute"})
    asyncio.run(_scenario(settings, skews, ops))
