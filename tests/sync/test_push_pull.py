"""Push and pull round trips, last-write-wins, tombstones, sessions, settings (both backends)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx

from conftest import TestUser, UserFactory
from sync.helpers import (
    MIN_VALUE,
    column,
    ids,
    memory,
    new_id,
    provider,
    pull,
    push,
    push_body,
    session,
    settings_dto,
    template,
    todo,
    ts,
)

EMPTY = "00000000-0000-0000-0000-000000000000"


def _without_api_key(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "apiKey"}


async def test_every_entity_round_trips_exactly(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    items = {
        "templates": [template(modified="2026-03-28T01:02:03.1234567Z", futureField={"a": [1, 2]})],
        "providers": [provider()],
        "memories": [memory()],
        "todos": [todo(columnId=new_id(), sortOrder=7, completedAt="2026-03-29T10:00:00.5Z")],
        "kanbanColumns": [column(isDefaultView=True)],
    }
    sessions = [session()]
    settings = settings_dto(modePersonaDefaults={"1": new_id()})
    result = await push(
        client, user.headers, push_body(settings=settings, sessions=sessions, **items)
    )
    assert result["conflicts"] == []
    assert result["idMappings"] == []
    assert result["serverTimestamp"].endswith("Z")
    assert len(result["serverTimestamp"]) == 28

    pulled = await pull(client, user.headers, since=MIN_VALUE + ".0000000")
    # Timestamps go back out with all 7 digits.
    items["todos"][0]["completedAt"] = "2026-03-29T10:00:00.5000000Z"
    for name, sent in items.items():
        assert pulled[name]["upserted"] == sent, name
        assert pulled[name]["deleted"] == []
    assert pulled["sessions"]["added"] == sessions
    assert pulled["settings"] == settings
    # The odd PascalCase key stays PascalCase; 7 fractional digits survive; unknown keys kept.
    assert pulled["templates"]["upserted"][0]["ExampleText"] == "Dear Sir or Madam"
    assert pulled["templates"]["upserted"][0]["modifiedAt"] == "2026-03-28T01:02:03.1234567Z"


async def test_pascal_case_and_gzip_pushes_bind(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    tid = new_id()
    body = {
        "LastSyncTimestamp": MIN_VALUE,
        "IsE2EEEncrypted": False,
        "Templates": {
            "Upserted": [
                {
                    "Id": tid.upper(),
                    "Name": "N",
                    "Prompt": "P",
                    "ExampleText": "E",
                    "CreatedAt": "2026-03-27T12:34:56+01:00",
                    "ModifiedAt": None,
                }
            ],
            "Deleted": [],
        },
    }
    raw = gzip.compress(json.dumps(body).encode())
    response = await client.post(
        "/api/sync/push",
        content=raw,
        headers={**user.headers, "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    pulled = await pull(client, user.headers)
    (stored,) = pulled["templates"]["upserted"]
    assert stored["id"] == tid  # lowercase, hyphenated
    assert stored["name"] == "N"
    assert stored["ExampleText"] == "E"
    assert stored["createdAt"] == "2026-03-27T11:34:56.0000000Z"  # offset converted to UTC


async def test_empty_pull_has_every_collection(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    pulled = await pull(client, user.headers, since="0001-01-01T00:00:00.0000000")
    for name in ("templates", "providers", "memories", "todos", "kanbanColumns"):
        assert pulled[name] == {"upserted": [], "deleted": []}
    assert pulled["sessions"] == {"added": [], "deleted": []}
    assert pulled["settings"] is None
    assert pulled["hasMore"] is False
    assert pulled["serverTimestamp"].endswith("Z")


async def test_null_collections_in_push_read_as_empty(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    body = {
        "templates": None,
        "sessions": {"added": None, "deleted": None},
        "todos": {"upserted": [todo()], "deleted": None},
    }
    await push(client, user.headers, body)
    assert len((await pull(client, user.headers))["todos"]["upserted"]) == 1


async def test_encrypted_records_are_stored_verbatim(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    enc = {"encryptedPayload": "AQID+/8=" * 20, "wrappedDek": "d3JhcHBlZA=="}
    sent_provider = provider(
        name=None, providerType=0, endpoint=None, modelName=None, apiKey=None, **enc
    )
    sent_session = session(
        originalText=None,
        optimizedText=None,
        templateId=EMPTY,
        templateName=None,
        providerId=EMPTY,
        providerName=None,
        tokensUsed=0,
        **enc,
    )
    sent_memory = memory(type=None, label=None, data="{}", **enc)
    sent_settings = settings_dto(
        defaultOutputAction=0,
        whisperModel=0,
        theme=0,
        targetLanguage=None,
        modeProviderDefaults={},
        **enc,
    )
    await push(
        client,
        user.headers,
        push_body(
            e2ee=True,
            settings=sent_settings,
            providers=[sent_provider],
            sessions=[sent_session],
            memories=[sent_memory],
        ),
    )
    pulled = await pull(client, user.headers)
    assert pulled["providers"]["upserted"] == [sent_provider]
    assert pulled["sessions"]["added"] == [sent_session]
    assert pulled["memories"]["upserted"] == [sent_memory]
    assert pulled["settings"] == sent_settings


async def test_empty_guid_gets_a_server_id(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    result = await push(client, user.headers, push_body(todos=[todo(EMPTY), todo(EMPTY)]))
    mappings = result["idMappings"]
    assert [(m["entity"], m["index"], m["clientId"]) for m in mappings] == [
        ("todos", 0, EMPTY),
        ("todos", 1, EMPTY),
    ]
    server_ids = {m["serverId"] for m in mappings}
    assert len(server_ids) == 2
    assert EMPTY not in server_ids
    assert ids(await pull(client, user.headers), "todos") == server_ids


async def test_last_write_wins(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user()
    tid = new_id()
    await push(
        client,
        user.headers,
        push_body(todos=[todo(tid, title="v2", updated="2026-03-27T10:00:00.0000002Z")]),
    )
    # Strictly older: refused, reported, the server's version stays.
    older = await push(
        client,
        user.headers,
        push_body(todos=[todo(tid, title="v1", updated="2026-03-27T10:00:00.0000001Z")]),
    )
    (conflict,) = older["conflicts"]
    assert conflict["entity"] == "todos"
    assert conflict["id"] == tid
    assert conflict["resolution"] == "server-wins"
    assert conflict["serverVersion"]["title"] == "v2"
    # Newer by one tick: wins.
    await push(
        client,
        user.headers,
        push_body(todos=[todo(tid, title="v3", updated="2026-03-27T10:00:00.0000003Z")]),
    )
    (stored,) = (await pull(client, user.headers))["todos"]["upserted"]
    assert stored["title"] == "v3"


async def test_template_timestamp_is_modified_or_created(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    tid = new_id()
    await push(client, user.headers, push_body(templates=[template(tid, name="a", modified=None)]))
    # modifiedAt now set (newer than createdAt): wins.
    await push(
        client,
        user.headers,
        push_body(templates=[template(tid, name="b", modified="2026-04-01T00:00:00Z")]),
    )
    # Only createdAt (older than the stored modifiedAt): loses.
    result = await push(
        client, user.headers, push_body(templates=[template(tid, name="c", modified=None)])
    )
    assert result["conflicts"][0]["resolution"] == "server-wins"
    assert (await pull(client, user.headers))["templates"]["upserted"][0]["name"] == "b"


async def test_identical_resend_changes_nothing(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    body = push_body(todos=[todo() for _ in range(5)], memories=[memory()], device_id=None)
    first = await push(client, user.headers, body)
    assert first["upserted"] == 6
    status_before = (await client.get("/api/sync/status", headers=user.headers)).json()
    cursor = (await pull(client, user.headers, limit=500))["nextCursor"]
    # Fresh ciphertext with the same timestamps is also "unchanged".
    body["memories"]["upserted"][0]["encryptedPayload"] = "bmV3IGNpcGhlcnRleHQ="
    again = await push(client, user.headers, body)
    assert again["upserted"] == 0
    assert again["unchanged"] == 6
    assert again["conflicts"] == []
    status_after = (await client.get("/api/sync/status", headers=user.headers)).json()
    assert status_after["changeSequence"] == status_before["changeSequence"]
    # A device that pulled after the first push is not woken by the re-send.
    pulled = await pull(client, user.headers, cursor=cursor, limit=500)
    assert ids(pulled, "todos") == set()
    assert ids(pulled, "memories") == set()


async def test_tombstones_block_stale_resurrection(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    tid = new_id()
    stale = todo(tid, updated=ts(-30))
    await push(client, user.headers, push_body(todos=[stale]))
    deleted = await push(
        client, user.headers, push_body(deleted={"todos": [tid]}, device_id="later")
    )
    assert deleted["deleted"] == 1
    pulled = await pull(client, user.headers)
    assert tid in pulled["todos"]["deleted"]
    assert ids(pulled, "todos") == set()
    # The early client's full re-send of the old version does not bring it back.
    result = await push(client, user.headers, push_body(todos=[stale]))
    assert result["conflicts"] == [
        {
            "entity": "todos",
            "id": tid,
            "serverVersion": None,
            "resolution": "deleted",
            "reason": result["conflicts"][0]["reason"],
        }
    ]
    assert ids(await pull(client, user.headers), "todos") == set()
    # A genuinely newer edit does.
    await push(client, user.headers, push_body(todos=[todo(tid, title="again", updated=ts(60))]))
    pulled = await pull(client, user.headers)
    assert ids(pulled, "todos") == {tid}
    assert pulled["todos"]["deleted"] == []


async def test_delete_of_unknown_id_leaves_a_tombstone(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    tid = new_id()
    await push(client, user.headers, push_body(deleted={"memories": [tid]}))
    await push(client, user.headers, push_body(memories=[memory(tid, updated=ts(-5))]))
    pulled = await pull(client, user.headers)
    assert pulled["memories"] == {"upserted": [], "deleted": [tid]}


async def test_sessions_are_append_only(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user()
    first = session()
    await push(client, user.headers, push_body(sessions=[first]))
    same = await push(client, user.headers, push_body(sessions=[first]))
    assert same["conflicts"] == []
    assert same["unchanged"] == 1
    changed = dict(first, optimizedText="something else")
    result = await push(client, user.headers, push_body(sessions=[changed]))
    assert [c["resolution"] for c in result["conflicts"]] == ["server-wins"]
    assert (await pull(client, user.headers))["sessions"]["added"] == [first]
    # An encrypted copy of a known session is a no-op, silently.
    enc = dict(first, encryptedPayload="eA==", wrappedDek="eQ==")
    assert (await push(client, user.headers, push_body(sessions=[enc])))["conflicts"] == []
    # Sessions can be deleted.
    await push(client, user.headers, push_body(deleted={"sessions": [first["id"]]}))
    pulled = await pull(client, user.headers)
    assert pulled["sessions"] == {"added": [], "deleted": [first["id"]]}


async def test_settings_singleton(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user()
    first = await push(client, user.headers, push_body(settings=settings_dto(theme=1)))
    # The early client stamps settings with "now" on every push: same content is no change.
    again = await push(
        client, user.headers, push_body(settings=settings_dto(theme=1, modifiedAt=ts(5)))
    )
    assert again["upserted"] == 0
    pulled = await pull(client, user.headers, since=first["serverTimestamp"], limit=100)
    assert pulled["settings"] is not None  # inclusive: the last change itself is re-sent
    later = await pull(client, user.headers, since=again["serverTimestamp"], limit=100)
    # A real change is newer and lands.
    await push(client, user.headers, push_body(settings=settings_dto(theme=2, modifiedAt=ts(10))))
    latest = await pull(client, user.headers, since=later["serverTimestamp"], limit=100)
    assert latest["settings"]["theme"] == 2
    # An older settings push loses.
    old = await push(
        client, user.headers, push_body(settings=settings_dto(theme=0, modifiedAt=ts(-600)))
    )
    assert old["conflicts"][0]["entity"] == "settings"
    assert old["conflicts"][0]["id"] is None
    assert (await pull(client, user.headers))["settings"]["theme"] == 2


async def test_since_forms_and_overlap(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user()
    result = await push(client, user.headers, push_body(todos=[todo()]))
    pushed_at = result["serverTimestamp"]
    # A cursor a little after the change (the early client's own clock): the overlap re-sends it.
    later = ts(60)
    assert len(ids(await pull(client, user.headers, since=later), "todos")) == 1
    # An unescaped '+' arrives as a space.
    offset_form = later.replace("Z", "+00:00")
    response = await client.get(f"/api/sync/pull?since={offset_form}", headers=user.headers)
    assert response.status_code == 200
    assert len(response.json()["todos"]["upserted"]) == 1
    # Far later than the overlap: nothing.
    assert ids(await pull(client, user.headers, since=ts(3600)), "todos") == set()
    # Inclusive: the exact change time is included.
    assert len(ids(await pull(client, user.headers, since=pushed_at, limit=10), "todos")) == 1
    # Garbage is a 400 that names the parameter.
    bad = await client.get("/api/sync/pull?since=yesterday", headers=user.headers)
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "since"


async def test_validation_errors_name_the_field(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    body = push_body(todos=[todo(), todo(updatedAt="not a time")])
    response = await client.post("/api/sync/push", json=body, headers=user.headers)
    assert response.status_code == 400
    data = response.json()
    assert data["error"] == "validation_failed"
    assert data["errors"][0]["field"] == "todos.upserted[1].updatedAt"
    assert (await pull(client, user.headers))["todos"]["upserted"] == []  # nothing stored
    broken = await client.post(
        "/api/sync/push", content=b"{", headers={**user.headers, "Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"] == "invalid_json"


async def test_server_wins_strategy(make_settings: Any) -> None:
    from conftest import client_for, create_test_user, running_app

    settings = make_settings(sync={"conflict_strategy": "server-wins"})
    async with running_app(settings) as app, client_for(app) as client:
        user: TestUser = await create_test_user(app)
        tid = new_id()
        first = await push(
            client, user.headers, push_body(todos=[todo(tid, title="a", updated=ts(-10))])
        )
        # A device that last synced before that change may not overwrite it, even if newer.
        refused = await push(
            client,
            user.headers,
            push_body(todos=[todo(tid, title="b", updated=ts())], last_sync=ts(-3600)),
        )
        assert [c["resolution"] for c in refused["conflicts"]] == ["server-wins"]
        assert refused["conflicts"][0]["serverVersion"]["title"] == "a"
        # One that synced after it may.
        accepted = await push(
            client,
            user.headers,
            push_body(todos=[todo(tid, title="c", updated=ts())], last_sync=ts(1, base=None)),
        )
        assert accepted["conflicts"] == []
        assert accepted["upserted"] == 1
        assert first["serverTimestamp"] < accepted["serverTimestamp"]
        assert (await pull(client, user.headers))["todos"]["upserted"][0]["title"] == "c"
        status = (await client.get("/api/sync/status", headers=user.headers)).json()
        assert status["conflictStrategy"] == "server-wins"


async def test_last_write_wins_reports_overridden_server_change(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    tid = new_id()
    await push(
        client, user.headers, push_body(todos=[todo(tid, title="other device", updated=ts(-10))])
    )
    result = await push(
        client,
        user.headers,
        push_body(todos=[todo(tid, title="mine", updated=ts())], last_sync=ts(-3600)),
    )
    (conflict,) = result["conflicts"]
    assert conflict["resolution"] == "client-wins"
    assert conflict["serverVersion"]["title"] == "other device"
    assert (await pull(client, user.headers))["todos"]["upserted"][0]["title"] == "mine"


async def test_push_response_is_json_even_when_empty(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    response = await client.post("/api/sync/push", json={}, headers=user.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert set(response.json()) >= {"serverTimestamp", "conflicts", "idMappings"}
