"""The later client's personas and scheduled jobs sync like every other type (both backends)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conftest import UserFactory
from sync.helpers import (
    MIN_VALUE,
    enable_e2ee_for,
    ids,
    persona,
    pull,
    push,
    push_body,
    scheduled_job,
    ts,
)

SINCE_EVER = MIN_VALUE + ".0000000"


async def test_personas_and_scheduled_jobs_round_trip_exactly_and_only_to_their_owner(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    owner, other = await make_user(), await make_user()
    sent = {"personas": [persona()], "scheduledJobs": [scheduled_job(specificDate=None)]}
    result = await push(client, owner.headers, push_body(**sent))
    assert (result["upserted"], result["conflicts"]) == (2, [])

    pulled = await pull(client, owner.headers, since=SINCE_EVER)
    # Undeclared fields (archetype as a string, timeOfDay as HH:mm:ss) come back as sent; a job
    # also carries the two ciphertext fields every E2EE type has, null here.
    expected = {
        "personas": sent["personas"],
        "scheduledJobs": [dict(sent["scheduledJobs"][0], encryptedPayload=None, wrappedDek=None)],
    }
    for name, items in expected.items():
        assert pulled[name] == {"upserted": items, "deleted": []}, name
    assert ids(await pull(client, other.headers, since=SINCE_EVER), "personas") == set()

    status = (await client.get("/api/sync/status", headers=owner.headers)).json()
    assert status["entities"]["personas"]["records"] == 1
    assert status["entities"]["scheduledJobs"]["records"] == 1
    quota = (await client.get("/api/sync/quota", headers=owner.headers)).json()
    assert quota["usage"]["recordsPerType"]["personas"] == 1


async def test_an_early_clients_pull_and_push_leave_them_alone(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    empty = await pull(client, user.headers, since=SINCE_EVER)
    assert empty["personas"] == {"upserted": [], "deleted": []}
    assert empty["scheduledJobs"] == {"upserted": [], "deleted": []}
    kept = persona()
    await push(client, user.headers, push_body(personas=[kept]))
    # A push without the keys (the early client's) changes nothing of them.
    await push(client, user.headers, push_body())
    assert ids(await pull(client, user.headers, since=SINCE_EVER), "personas") == {kept["id"]}


async def test_a_delete_reaches_the_other_device_and_a_stale_copy_stays_deleted(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    job = scheduled_job(updated=ts(-60))
    await push(client, user.headers, push_body(scheduledJobs=[job], device_id="laptop"))
    cursor = (await pull(client, user.headers, since=SINCE_EVER))["serverTimestamp"]

    await push(
        client, user.headers, push_body(deleted={"scheduledJobs": [job["id"]]}, device_id="laptop")
    )
    on_desktop = await pull(client, user.headers, since=cursor)
    assert on_desktop["scheduledJobs"]["deleted"] == [job["id"]]

    # The desktop still has its old copy and pushes it back: the tombstone holds.
    result = await push(client, user.headers, push_body(scheduledJobs=[job], device_id="desktop"))
    assert result["upserted"] == 0
    assert ids(await pull(client, user.headers, since=SINCE_EVER), "scheduledJobs") == set()


async def test_an_older_persona_loses_to_the_stored_one(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    newer = persona(updated=ts(), name="Newer")
    await push(client, user.headers, push_body(personas=[newer]))
    older = dict(newer, name="Older", updatedAt=ts(-3600))
    result = await push(client, user.headers, push_body(personas=[older]))
    assert [c["entity"] for c in result["conflicts"]] == ["personas"]
    (stored,) = (await pull(client, user.headers, since=SINCE_EVER))["personas"]["upserted"]
    assert stored["name"] == "Newer"


@pytest.mark.parametrize(
    ("entity", "plaintext"),
    [
        ("personas", persona()),
        (
            "personas",
            persona(
                name=None,
                tagline=None,
                systemPrompt=None,
                guardrails=None,
                outputFormat=None,
                expertise=["only the expertise is readable"],
            ),
        ),
        ("scheduledJobs", scheduled_job()),
    ],
)
async def test_an_e2ee_account_refuses_readable_personas_and_jobs(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    monkeypatch: pytest.MonkeyPatch,
    entity: str,
    plaintext: dict[str, Any],
) -> None:
    user = await make_user()
    enable_e2ee_for(monkeypatch, user.id)
    response = await client.post(
        "/api/sync/push", json=push_body(**{entity: [plaintext]}), headers=user.headers
    )
    assert response.status_code == 403
    assert response.json()["error"] == "e2ee_required"
    assert ids(await pull(client, user.headers, since=SINCE_EVER), entity) == set()


async def test_an_e2ee_account_stores_encrypted_personas_and_jobs_verbatim(
    client: httpx.AsyncClient, make_user: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    enable_e2ee_for(monkeypatch, user.id)
    # Text under the ciphertext, nulled or empty beside it; the plain metadata stays.
    sealed = {"encryptedPayload": "AWN0", "wrappedDek": "ZGVr"}
    encrypted_persona = persona(
        name=None,
        tagline="",
        systemPrompt=None,
        guardrails=None,
        outputFormat=None,
        expertise=[],
        **sealed,
    )
    encrypted_job = scheduled_job(name=None, query=None, **sealed)
    await push(
        client,
        user.headers,
        push_body(e2ee=True, personas=[encrypted_persona], scheduledJobs=[encrypted_job]),
    )
    pulled = await pull(client, user.headers, since=SINCE_EVER)
    assert pulled["personas"]["upserted"] == [encrypted_persona]
    assert pulled["scheduledJobs"]["upserted"] == [encrypted_job]
