"""Paged pulls: limit, hasMore, serverTimestamp per page, groups never split, cursors, ETags."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from conftest import UserFactory
from pia_server.sync.storage import sync_records
from sync.helpers import MIN_VALUE, ids, memory, pull, push, push_body, ticks_of, todo


async def _drain_by_time(
    client: httpx.AsyncClient, headers: dict[str, str], limit: int
) -> tuple[set[str], int]:
    """Drain like the later client: cursor = serverTimestamp, while hasMore and it advances."""
    since = MIN_VALUE + ".0000000"
    seen: set[str] = set()
    pages = 0
    while True:
        page = await pull(client, headers, since=since, limit=limit)
        pages += 1
        got = ids(page, "todos")
        seen |= got
        if not page["hasMore"] or ticks_of(page["serverTimestamp"]) <= ticks_of(since):
            return seen, pages
        since = page["serverTimestamp"]
        assert pages < 100


async def test_paging_by_time_delivers_everything(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    sent = [todo() for _ in range(23)]
    for start in range(0, 23, 7):
        await push(client, user.headers, push_body(todos=sent[start : start + 7]))
    seen, pages = await _drain_by_time(client, user.headers, limit=5)
    assert seen == {t["id"] for t in sent}
    assert pages >= 5


async def test_page_server_timestamp_is_latest_change_in_page(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    await push(client, user.headers, push_body(todos=[todo() for _ in range(4)]))
    first = await pull(client, user.headers, since=MIN_VALUE, limit=2)
    assert first["hasMore"] is True
    assert len(first["todos"]["upserted"]) == 2
    rest = await pull(client, user.headers, since=MIN_VALUE)
    assert len(rest["todos"]["upserted"]) == 4
    assert ticks_of(first["serverTimestamp"]) < ticks_of(rest["serverTimestamp"])


async def test_a_group_sharing_one_change_time_is_never_split(
    app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    await push(client, user.headers, push_body(todos=[todo() for _ in range(3)]))
    await push(client, user.headers, push_body(memories=[memory() for _ in range(4)]))
    await push(client, user.headers, push_body(todos=[todo()]))
    # Records that share one change time (as rows written by an older server version could).
    async with app.state.ctx.db.write() as conn:
        rows = await conn.execute(
            update(sync_records)
            .where(sync_records.c.user_id == user.id, sync_records.c.entity == "memories")
            .values(changed_at=12345678901234567)
            .returning(sync_records.c.seq)
        )
        assert len(rows.all()) == 4
        await conn.execute(
            update(sync_records)
            .where(sync_records.c.user_id == user.id, sync_records.c.entity == "todos")
            .values(changed_at=sync_records.c.seq)
        )
        await conn.execute(
            update(sync_records)
            .where(sync_records.c.user_id == user.id, sync_records.c.seq == 8)
            .values(changed_at=12345678901234568)
        )
    # Pages of 4 starting from the 3 todos: the memory group (4 rows) must come whole.
    page = await pull(client, user.headers, since=MIN_VALUE, limit=4)
    assert len(page["todos"]["upserted"]) == 3
    assert len(page["memories"]["upserted"]) == 4
    assert page["hasMore"] is True
    assert ticks_of(page["serverTimestamp"]) == 12345678901234567
    rest = await pull(client, user.headers, cursor=page["nextCursor"], limit=4)
    assert len(rest["todos"]["upserted"]) == 1
    assert rest["hasMore"] is False


async def test_cursor_paging_needs_no_clock(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    sent = {t["id"] for t in [todo() for _ in range(9)]}
    await push(client, user.headers, push_body(todos=[todo(i) for i in sent]))
    seen: set[str] = set()
    page = await pull(client, user.headers, limit=4)
    seen |= ids(page, "todos")
    while page["hasMore"]:
        page = await pull(client, user.headers, cursor=page["nextCursor"], limit=4)
        seen |= ids(page, "todos")
    assert seen == sent
    # The final cursor sees only what changes afterwards.
    newer = todo()
    await push(client, user.headers, push_body(todos=[newer]))
    after = await pull(client, user.headers, cursor=page["nextCursor"], limit=4)
    assert ids(after, "todos") == {newer["id"]}
    bad = await client.get("/api/sync/pull?cursor=nonsense", headers=user.headers)
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_cursor"


async def test_limit_is_capped(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user()
    response = await client.get("/api/sync/pull?limit=100000", headers=user.headers)
    assert response.status_code == 200
    zero = await client.get("/api/sync/pull?limit=0", headers=user.headers)
    assert zero.status_code == 400


async def test_etag_gives_304_until_something_changes(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    await push(client, user.headers, push_body(todos=[todo()]))
    url = "/api/sync/pull?since=2026-01-01T00:00:00.0000000Z&limit=500"
    first = await client.get(url, headers=user.headers)
    etag = first.headers["etag"]
    same = await client.get(url, headers={**user.headers, "If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    # An identical re-send does not change the ETag.
    body = push_body(todos=[first.json()["todos"]["upserted"][0]])
    await push(client, user.headers, body)
    assert (
        await client.get(url, headers={**user.headers, "If-None-Match": etag})
    ).status_code == 304
    await push(client, user.headers, push_body(todos=[todo()]))
    changed = await client.get(url, headers={**user.headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    # Another query with the old tag is not "unchanged".
    other = await client.get(
        "/api/sync/pull?limit=500", headers={**user.headers, "If-None-Match": etag}
    )
    assert other.status_code == 200
