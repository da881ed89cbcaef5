"""User isolation on every sync route, and concurrent pushes that never lose a change."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from conftest import UserFactory
from pia_server.sync.lookup import find_user_template
from sync.helpers import MIN_VALUE, ids, memory, pull, push, push_body, session, template, todo, ts


async def test_user_b_cannot_read_touch_or_learn_of_a(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    a = await make_user()
    b = await make_user()
    secret_todo = todo(title="A's secret")
    secret_session = session()
    await push(
        client,
        a.headers,
        push_body(todos=[secret_todo], sessions=[secret_session], device_id="a-laptop"),
    )
    a_pull = await pull(client, a.headers, limit=500)

    # Pull by time, by cursor (A's own cursor too), with A's ETag: nothing of A's.
    for params in (
        {"since": MIN_VALUE},
        {"limit": 500},
        {"cursor": a_pull["nextCursor"]},
        {"cursor": "c1.MA"},
    ):
        got = await pull(client, b.headers, **params)
        assert ids(got, "todos") == set()
        assert ids(got, "sessions") == set()
    etag_probe = await client.get(
        "/api/sync/pull?limit=500", headers={**b.headers, "If-None-Match": "*"}
    )
    assert etag_probe.status_code == 200

    # B pushing A's ids: B gets its own records, no conflict reveals A's, A is untouched.
    older = dict(secret_todo, title="B's", updatedAt="2000-01-01T00:00:00.0000000Z")
    result = await push(
        client,
        b.headers,
        push_body(todos=[older], sessions=[dict(secret_session, optimizedText="x")]),
    )
    assert result["conflicts"] == []
    assert result["upserted"] == 2
    result = await push(
        client,
        b.headers,
        push_body(deleted={"todos": [secret_todo["id"]], "sessions": [secret_session["id"]]}),
    )
    assert result["conflicts"] == []
    a_after = await pull(client, a.headers)
    assert a_after["todos"]["upserted"] == [secret_todo]
    assert a_after["sessions"]["added"] == [secret_session]
    assert a_after["todos"]["deleted"] == []
    assert a_after["sessions"]["deleted"] == []

    # Status, events and quota show B's own things only.
    status = (await client.get("/api/sync/status", headers=b.headers)).json()
    assert "a-laptop" not in str(status)
    events = (await client.get("/api/sync/events", headers=b.headers)).json()
    assert all(e["deviceId"] != "a-laptop" for e in events["events"])
    a_events = (await client.get("/api/sync/events", headers=a.headers)).json()["events"]
    assert len(a_events) == 1
    before_a = a_events[0]["id"] + 1
    paged = (await client.get(f"/api/sync/events?before={before_a}", headers=b.headers)).json()
    assert all(e["id"] != a_events[0]["id"] for e in paged["events"])
    quota = (await client.get("/api/sync/quota", headers=b.headers)).json()
    assert quota["usage"]["recordsPerType"]["todos"] == 0  # B's tombstone, A's record not counted


async def test_every_route_requires_a_token(client: httpx.AsyncClient) -> None:
    for method, path in (
        ("POST", "/api/sync/push"),
        ("GET", "/api/sync/pull"),
        ("GET", "/api/sync/status"),
        ("GET", "/api/sync/events"),
        ("GET", "/api/sync/quota"),
    ):
        response = await client.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401, path
        bad = await client.request(
            method, path, headers={"Authorization": "Bearer forged.token.here"}
        )
        assert bad.status_code == 401, path


async def test_template_lookup_is_per_user(
    app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    a = await make_user()
    b = await make_user()
    plain = template(name="Mail", prompt="Be formal")
    enc = template(
        name=None,
        prompt=None,
        description=None,
        ExampleText=None,
        encryptedPayload="Y3Q=",
        wrappedDek="ZA==",
    )
    gone = template()
    await push(client, a.headers, push_body(templates=[plain, enc, gone]))
    await push(client, a.headers, push_body(deleted={"templates": [gone["id"]]}))
    async with app.state.ctx.db.read() as conn:
        found = await find_user_template(conn, a.id, plain["id"].upper())
        assert found is not None
        assert (found.name, found.prompt, found.encrypted) == (
            "Mail",
            "Be formal",
            False,
        )
        hidden = await find_user_template(conn, a.id, enc["id"])
        assert hidden is not None
        assert hidden.encrypted
        assert hidden.prompt is None
        assert await find_user_template(conn, a.id, gone["id"]) is None
        assert await find_user_template(conn, b.id, plain["id"]) is None
        assert await find_user_template(conn, a.id, "not-a-guid") is None


async def test_concurrent_pushes_never_lose_a_change(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    shared = todo(title="start", updated=ts(-100))
    await push(client, user.headers, push_body(todos=[shared]))
    devices = 8
    bodies = []
    for n in range(devices):
        # Each device adds its own records and edits the shared one with its own timestamp.
        edit = dict(shared, title=f"device {n}", updatedAt=ts(n, base=None))
        bodies.append(
            push_body(
                todos=[edit, todo()], memories=[memory() for _ in range(3)], device_id=f"d{n}"
            )
        )
    results = await asyncio.gather(
        *(client.post("/api/sync/push", json=body, headers=user.headers) for body in bodies)
    )
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    pulled = await pull(client, user.headers)
    assert len(pulled["todos"]["upserted"]) == 1 + devices
    assert len(pulled["memories"]["upserted"]) == 3 * devices
    # Last write wins on the entity's own timestamp, whatever order the pushes landed in.
    final = next(t for t in pulled["todos"]["upserted"] if t["id"] == shared["id"])
    newest = max(bodies, key=lambda b: b["todos"]["upserted"][0]["updatedAt"])
    assert final["title"] == newest["todos"]["upserted"][0]["title"]
    # Sequences were handed out without gaps or reuse: a cursor walk sees every change once.
    seen: list[str] = []
    page = await pull(client, user.headers, limit=7)
    while True:
        seen += [t["id"] for t in page["todos"]["upserted"]] + [
            m["id"] for m in page["memories"]["upserted"]
        ]
        if not page["hasMore"]:
            break
        page = await pull(client, user.headers, cursor=page["nextCursor"], limit=7)
    assert len(seen) == len(set(seen)) == 1 + devices + 3 * devices
    status = (await client.get("/api/sync/status", headers=user.headers)).json()
    written = sum(r.json()["upserted"] for r in results) + 1
    assert status["changeSequence"] == written
