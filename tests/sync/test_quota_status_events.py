"""Quotas (a push refused whole), status, the audit log, rate-limit policies."""

from __future__ import annotations

from typing import Any

import httpx

from conftest import UserFactory, client_for, create_test_user, running_app
from sync.helpers import memory, pull, push, push_body, session, todo


async def test_quota_refuses_the_whole_push(make_settings: Any) -> None:
    settings = make_settings(quota={"max_records_per_type": 5, "records_per_type": {"sessions": 3}})
    async with running_app(settings) as app, client_for(app) as client:
        user = await create_test_user(app)
        await push(client, user.headers, push_body(todos=[todo() for _ in range(4)]))
        response = await client.post(
            "/api/sync/push",
            json=push_body(
                todos=[todo(), todo()], memories=[memory()], sessions=[session() for _ in range(4)]
            ),
            headers=user.headers,
        )
        assert response.status_code == 409
        body = response.json()
        assert body["error"] == "quota_exceeded"
        assert body["message"]
        limits = {(e["limit"], e.get("entity")): e for e in body["errors"]}
        assert limits[("records_per_type", "todos")]["current"] == 4
        assert limits[("records_per_type", "todos")]["max"] == 5
        assert limits[("records_per_type", "sessions")]["max"] == 3
        pulled = await pull(client, user.headers)
        assert len(pulled["todos"]["upserted"]) == 4
        assert pulled["memories"]["upserted"] == []
        # Deleting makes room; updates of existing records never count twice.
        existing = pulled["todos"]["upserted"]
        ok = push_body(todos=[todo(), *existing], deleted={"todos": [existing[0]["id"]]})
        assert (
            await client.post("/api/sync/push", json=ok, headers=user.headers)
        ).status_code == 200
        quota = (await client.get("/api/sync/quota", headers=user.headers)).json()
        assert quota["limits"]["recordsPerType"]["todos"] == 5
        assert quota["limits"]["recordsPerType"]["sessions"] == 3
        assert quota["usage"]["recordsPerType"]["todos"] == 4
        assert quota["usage"]["totalBytes"] > 0


async def test_record_and_total_byte_quotas(make_settings: Any) -> None:
    settings = make_settings(quota={"max_record_bytes": 2048, "max_total_bytes": 6000})
    async with running_app(settings) as app, client_for(app) as client:
        user = await create_test_user(app)
        big = todo(notes="x" * 3000)
        response = await client.post(
            "/api/sync/push", json=push_body(todos=[big]), headers=user.headers
        )
        assert response.status_code == 409
        (error,) = response.json()["errors"]
        assert error["limit"] == "max_record_bytes"
        assert error["id"] == big["id"]
        many = [todo(notes="y" * 1500) for _ in range(5)]
        response = await client.post(
            "/api/sync/push", json=push_body(todos=many), headers=user.headers
        )
        assert response.status_code == 409
        assert response.json()["errors"][0]["limit"] == "max_total_bytes"
        assert (await pull(client, user.headers))["todos"]["upserted"] == []


async def test_status_reports_counts_bytes_times_devices(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    empty = (await client.get("/api/sync/status", headers=user.headers)).json()
    assert empty["lastPushAt"] is None
    assert empty["totalRecords"] == 0
    assert empty["devices"] == []
    t = todo()
    await push(
        client, user.headers, push_body(todos=[t, todo()], memories=[memory()], device_id="laptop")
    )
    await push(client, user.headers, push_body(deleted={"todos": [t["id"]]}, device_id="phone"))
    await pull(client, user.headers)
    status = (await client.get("/api/sync/status", headers=user.headers)).json()
    assert status["entities"]["todos"]["records"] == 1
    assert status["entities"]["todos"]["tombstones"] == 1
    assert status["entities"]["memories"]["records"] == 1
    assert status["entities"]["todos"]["bytes"] > 100
    assert status["totalRecords"] == 2
    assert status["lastPushAt"].endswith("Z")
    assert status["lastPullAt"].endswith("Z")
    assert {d["deviceId"] for d in status["devices"]} == {"laptop", "phone"}
    assert status["conflictStrategy"] == "last-write-wins"
    assert status["e2eeEnabled"] is False


async def test_events_are_own_newest_first_and_paged(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    other = await make_user()
    t = todo(title="very private title")
    await push(client, user.headers, push_body(todos=[t], device_id="laptop"))
    await push(client, user.headers, push_body(todos=[t], device_id="laptop"))  # no-op: no event
    await push(client, user.headers, push_body(deleted={"todos": [t["id"]]}, device_id="phone"))
    await push(client, other.headers, push_body(todos=[todo()]))
    page = (await client.get("/api/sync/events?limit=2", headers=user.headers)).json()
    assert [e["event"] for e in page["events"]] == ["sync.delete", "sync.push"]
    assert page["events"][0]["deviceId"] == "phone"
    assert page["events"][1]["details"]["deleted"] == {"todos": 1}
    assert page["hasMore"] is True
    rest = (
        await client.get(
            f"/api/sync/events?limit=2&before={page['nextBefore']}", headers=user.headers
        )
    ).json()
    assert [e["event"] for e in rest["events"]] == ["sync.push"]
    assert rest["events"][0]["details"]["upserted"] == {"todos": 1}
    assert rest["hasMore"] is False
    assert rest["nextBefore"] is None
    assert "very private title" not in str(page) + str(rest)
    assert rest["events"][0]["createdAt"].endswith("Z")


async def test_e2ee_flag_binds_in_the_clients_spelling(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    for key in ("isE2EEEncrypted", "IsE2EEEncrypted"):
        body = push_body(todos=[todo()])
        del body["isE2EEEncrypted"]
        body[key] = True
        await push(client, user.headers, body)
    events = (await client.get("/api/sync/events", headers=user.headers)).json()["events"]
    assert [e["details"]["e2ee"] for e in events] == [True, True]


async def test_push_and_pull_use_the_sync_policy(make_settings: Any) -> None:
    settings = make_settings(rate_limits={"sync": "2/minute", "global": "100/minute"})
    async with running_app(settings) as app, client_for(app) as client:
        user = await create_test_user(app)
        await push(client, user.headers, push_body())
        await pull(client, user.headers)
        refused = await client.get("/api/sync/pull", headers=user.headers)
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert (
            await client.post("/api/sync/push", json={}, headers=user.headers)
        ).status_code == 429
        for route in ("status", "events", "quota"):
            assert (await client.get(f"/api/sync/{route}", headers=user.headers)).status_code == 200
