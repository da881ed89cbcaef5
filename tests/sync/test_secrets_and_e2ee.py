"""Provider API keys at rest, the server key, and the E2EE hooks of a push."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from conftest import UserFactory, client_for, create_test_user, running_app
from pia_server.core.config import ConfigError, load_settings
from pia_server.e2ee import storage as e2ee_storage
from pia_server.sync.storage import sync_records
from sync.helpers import (
    enable_e2ee_for,
    memory,
    provider,
    pull,
    push,
    push_body,
    settings_dto,
    todo,
)

SECRET = "sk-test-SECRET-123"


async def test_api_key_is_encrypted_at_rest_and_only_the_owner_reads_it(
    app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    owner = await make_user()
    other = await make_user()
    sent = provider()
    await push(client, owner.headers, push_body(providers=[sent]))
    async with app.state.ctx.db.read() as conn:
        rows = (await conn.execute(select(sync_records))).mappings().all()
        dump = " ".join(str(dict(r)) for r in rows)
        audit = " ".join(
            str(r) for r in (await conn.execute(text("SELECT * FROM audit_events"))).all()
        )
    assert SECRET not in dump
    assert SECRET not in audit
    assert rows[0]["secret"]
    assert rows[0]["secret"].startswith("v1:")
    assert (await pull(client, owner.headers))["providers"]["upserted"] == [sent]
    assert (await pull(client, other.headers))["providers"]["upserted"] == []
    status = await client.get("/api/sync/status", headers=owner.headers)
    events = await client.get("/api/sync/events", headers=owner.headers)
    assert SECRET not in status.text
    assert SECRET not in events.text
    # A newer version without a key clears it.
    cleared = provider(sent["id"], apiKey=None, updated="2099-01-01T00:00:00.0000000Z")
    await push(client, owner.headers, push_body(providers=[cleared]))
    assert (await pull(client, owner.headers))["providers"]["upserted"][0]["apiKey"] is None


async def test_conflict_reports_do_not_carry_the_api_key(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    sent = provider(updated="2030-01-01T00:00:00.0000000Z")
    await push(client, user.headers, push_body(providers=[sent]))
    older = provider(sent["id"], updated="2029-01-01T00:00:00.0000000Z")
    result = await push(client, user.headers, push_body(providers=[older]))
    assert result["conflicts"][0]["resolution"] == "server-wins"
    assert SECRET not in str(result)


async def test_server_key_is_generated_once_into_the_data_dir(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(sync={"encryption_key": ""})
    async with running_app(settings) as app, client_for(app) as client:
        user = await create_test_user(app)
        await push(client, user.headers, push_body(providers=[provider()]))
    key_file = settings.server.data_dir / "sync-key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    first_key = key_file.read_text()
    # A restart reads the same key, so the stored key still opens.
    async with running_app(settings) as app, client_for(app) as client:
        pulled = await pull(client, user.headers)
        assert pulled["providers"]["upserted"][0]["apiKey"] == SECRET
    assert key_file.read_text() == first_key


def test_a_bad_configured_key_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sync\.encryption_key"):
        load_settings(environ={}, overrides={"sync": {"encryption_key": "c2hvcnQ="}})


async def test_plaintext_push_to_an_e2ee_account_stores_nothing(
    client: httpx.AsyncClient, make_user: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    enable_e2ee_for(monkeypatch, user.id)
    response = await client.post(
        "/api/sync/push", json=push_body(todos=[todo()]), headers=user.headers
    )
    assert response.status_code == 403
    assert response.json()["error"] == "e2ee_required"
    # Encrypted records, and records with only default plaintext fields, are accepted.
    enc = memory(type=None, label=None, data="{}", encryptedPayload="Y3Q=", wrappedDek="ZGVr")
    settings = settings_dto(
        defaultOutputAction=0,
        whisperModel=0,
        theme=0,
        targetLanguage=None,
        modeProviderDefaults={},
        encryptedPayload="Y3Q=",
        wrappedDek="ZGVr",
    )
    await push(client, user.headers, push_body(memories=[enc], settings=settings))
    pulled = await pull(client, user.headers)
    assert pulled["todos"]["upserted"] == []
    assert len(pulled["memories"]["upserted"]) == 1
    status = (await client.get("/api/sync/status", headers=user.headers)).json()
    assert status["e2eeEnabled"] is True


async def test_push_touches_the_e2ee_device(
    client: httpx.AsyncClient, make_user: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    touched: list[tuple[str, str]] = []

    async def touch(conn: Any, user_id: str, device_id: str) -> None:
        touched.append((user_id, device_id))

    monkeypatch.setattr(e2ee_storage, "touch_device", touch)
    await push(client, user.headers, push_body(device_id="dev-1"))
    await push(client, user.headers, push_body(device_id=None))
    assert touched == [(user.id, "dev-1")]
    status = (await client.get("/api/sync/status", headers=user.headers)).json()
    assert [d["deviceId"] for d in status["devices"]] == ["dev-1"]
