"""E2EE with sync: records encrypted on one device, pushed, pulled and decrypted on another; the
server stores no plaintext, and refuses plaintext pushes once the account has a UMK."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select, update

from pia_server.e2ee.storage import e2ee_devices
from pia_server.sync.storage import sync_records
from support.e2ee_client import E2eeClient

from .conftest import E2eeFactory

MIN_SINCE = "0001-01-01T00:00:00.0000000"
STAMP = "2026-03-27T12:34:56.1234567Z"


async def approved_pair(new_device: E2eeFactory) -> tuple[E2eeClient, E2eeClient]:
    first = await new_device()
    await first.bootstrap_first_device()
    second = first.for_device()
    await second.register()
    await first.approve(second.device_id)
    await second.fetch_umk()
    return first, second


def encrypted_push(device: E2eeClient, secret: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A push like the client's for an E2EE device: content only inside the ciphertext."""
    template_id, memory_id, todo_id = (str(uuid.uuid4()) for _ in range(3))
    plain: dict[str, tuple[str, dict[str, Any]]] = {
        "template": (
            template_id,
            {
                "Name": f"{secret} name",
                "Prompt": f"{secret} prompt",
                "Description": "d",
                "StyleDescription": "s",
            },
        ),
        "memory": (memory_id, {"Type": "fact", "Label": f"{secret} label", "Data": "{}"}),
        "todo": (
            todo_id,
            {
                "Title": f"{secret} title",
                "Notes": None,
                "Priority": 2,
                "Status": 0,
                "DueDate": None,
                "LinkedReminderId": None,
                "CompletedAt": None,
                "ColumnId": None,
            },
        ),
    }
    sealed = {
        kind: device.encrypt(kind, entity_id, payload, compress=(kind != "todo"))
        for kind, (entity_id, payload) in plain.items()
    }
    body = {
        "clientTimestamp": STAMP,
        "lastSyncTimestamp": "0001-01-01T00:00:00",
        "deviceId": device.device_id,
        "isE2EEEncrypted": True,
        "templates": {
            "upserted": [
                {
                    "id": template_id,
                    "encryptedPayload": sealed["template"][0],
                    "wrappedDek": sealed["template"][1],
                    "createdAt": STAMP,
                    "modifiedAt": STAMP,
                }
            ],
            "deleted": [],
        },
        "memories": {
            "upserted": [
                {
                    "id": memory_id,
                    "data": "{}",
                    "encryptedPayload": sealed["memory"][0],
                    "wrappedDek": sealed["memory"][1],
                    "createdAt": STAMP,
                    "updatedAt": STAMP,
                    "lastAccessedAt": "2026-03-27T00:00:00Z",
                }
            ],
            "deleted": [],
        },
        "todos": {
            "upserted": [
                {
                    "id": todo_id,
                    "priority": 0,
                    "status": 0,
                    "sortOrder": 3,
                    "encryptedPayload": sealed["todo"][0],
                    "wrappedDek": sealed["todo"][1],
                    "createdAt": STAMP,
                    "updatedAt": STAMP,
                }
            ],
            "deleted": [],
        },
    }
    return body, plain


async def pull_all(device: E2eeClient) -> dict[str, Any]:
    response = await device.request("GET", f"/api/sync/pull?since={MIN_SINCE}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def stored_bytes(app: FastAPI, user_id: str) -> list[str]:
    async with app.state.ctx.db.read() as conn:
        rows = await conn.execute(
            select(sync_records.c.payload, sync_records.c.secret).where(
                sync_records.c.user_id == user_id
            )
        )
        return [f"{payload}|{secret}" for payload, secret in rows]


async def test_encrypted_records_round_trip_between_devices(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    first, second = await approved_pair(new_device)
    secret = f"plaintext-marker-{uuid.uuid4().hex}"
    body, plain = encrypted_push(first, secret)

    pushed = await first.request("POST", "/api/sync/push", json=body)
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["conflicts"] == []

    pulled = await pull_all(second)
    by_kind = {
        "template": pulled["templates"]["upserted"],
        "memory": pulled["memories"]["upserted"],
        "todo": pulled["todos"]["upserted"],
    }
    for kind, (entity_id, payload) in plain.items():
        [record] = [r for r in by_kind[kind] if r["id"] == entity_id]
        decrypted = second.decrypt(
            kind, entity_id, record["encryptedPayload"], record["wrappedDek"]
        )
        assert decrypted == payload

    # What the server keeps is ciphertext only: no trace of the plaintext anywhere.
    rows = await stored_bytes(app, first.user_id)
    assert len(rows) == 3
    for row in rows:
        assert secret not in row


async def test_push_with_device_id_updates_last_seen(new_device: E2eeFactory, app: FastAPI) -> None:
    first, _second = await approved_pair(new_device)
    async with app.state.ctx.db.write() as conn:
        await conn.execute(
            update(e2ee_devices)
            .where(e2ee_devices.c.device_id == first.device_id)
            .values(last_seen_at=10**17)
        )
    body, _plain = encrypted_push(first, "x")
    assert (await first.request("POST", "/api/sync/push", json=body)).status_code == 200
    info = await first.device_info()
    assert info is not None
    assert info["lastSeenAt"] > "2026-01-01"


async def _push_plaintext_after_bootstrap(
    new_device: E2eeFactory, app: FastAPI, flag: bool
) -> None:
    device = await new_device()
    template = {
        "id": str(uuid.uuid4()),
        "name": "visible name",
        "prompt": "visible prompt",
        "createdAt": STAMP,
        "modifiedAt": STAMP,
    }
    plaintext = {"deviceId": device.device_id, "templates": {"upserted": [template]}}
    # Before E2EE is on, plaintext is what sync is for.
    before = await device.request("POST", "/api/sync/push", json=plaintext)
    assert before.status_code == 200, before.text

    await device.bootstrap_first_device()
    rows_before = await stored_bytes(app, device.user_id)

    body = {
        "deviceId": device.device_id,
        "isE2EEEncrypted": flag,
        "templates": {"upserted": [{**template, "id": str(uuid.uuid4()), "name": "after e2ee"}]},
    }
    refused = await device.request("POST", "/api/sync/push", json=body)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "e2ee_required"
    assert await stored_bytes(app, device.user_id) == rows_before


async def test_plaintext_push_to_e2ee_account_is_refused(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    await _push_plaintext_after_bootstrap(new_device, app, flag=False)


async def test_plaintext_claiming_to_be_encrypted_is_refused(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    await _push_plaintext_after_bootstrap(new_device, app, flag=True)
