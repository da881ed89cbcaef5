"""End to end, as the real client: the real ``pia-server serve`` process on SQLite and on
PostgreSQL, driven over HTTP the way the desktop client drives it (contract B, C, E.2-E.4, F.5).

Servers are started once per backend and per configuration (module scope); every test signs up
its own account, so the tests do not see each other's data.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from e2e.conftest import ServerPool
from e2e.desktop_client import (
    MIN_BODY,
    MIN_O,
    Account,
    EarlyClient,
    bearer,
    jwt_expiry,
    login,
    new_account,
    o_format,
    register,
    sample_state,
)
from support.e2ee_client import E2eeClient
from support.fake_upstreams import RunningUpstream, Scenario, start_fake_upstream
from support.server_process import ServerProcess

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "sk-upstream-" + "k" * 20
REPLY = "Dear team, the release ships on Friday."
NO_LIMITS = {"PIA_RATE_LIMITS__ENABLED": "false"}


# ---- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[RunningUpstream]:
    with start_fake_upstream(Scenario(reply_text=REPLY, expected_api_key=UPSTREAM_KEY)) as up:
        yield up


@pytest.fixture(scope="module")
def servers(server_pool: ServerPool, fake_llm: RunningUpstream) -> dict[str, ServerProcess]:
    """The configurations this module needs, started side by side (start-up is mostly idle)."""
    ai_toml = f"""
[ai.providers.fake]
type = "openai-compatible"
base_url = "{fake_llm.openai_base_url}"
api_key = "{UPSTREAM_KEY}"
model = "gpt-4o-mini"
"""
    return server_pool.start_many(
        {
            # Default settings (last-write-wins, 15-minute tokens) and an AI provider.
            "main": {
                "env": {**NO_LIMITS, "PIA_AI__DEFAULT_PROVIDER": "fake"},
                "config_toml": ai_toml,
            },
            # The strict choices: server-wins conflicts, no grace for a rotated refresh token.
            "strict": {
                "env": {
                    **NO_LIMITS,
                    "PIA_SYNC__CONFLICT_STRATEGY": "server-wins",
                    "PIA_AUTH__REFRESH_REUSE_GRACE_SECONDS": "0",
                }
            },
            # Access tokens live 2 s with no leeway; a rotated refresh token is honoured 1 s.
            "short_tokens": {
                "env": {
                    **NO_LIMITS,
                    "PIA_AUTH__ACCESS_TOKEN_TTL_SECONDS": "2",
                    "PIA_AUTH__ACCESS_TOKEN_LEEWAY_SECONDS": "0",
                    "PIA_AUTH__REFRESH_REUSE_GRACE_SECONDS": "1",
                }
            },
        }
    )


@pytest.fixture(scope="module")
def main_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["main"]


@pytest.fixture(scope="module")
def server_wins_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["strict"]


@pytest.fixture(scope="module")
def short_token_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["short_tokens"]


@pytest.fixture(scope="module")
def no_grace_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["strict"]


@asynccontextmanager
async def http_to(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    # One HTTP client per desktop: connections are not shared between devices.
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


# ---- sign-up and sign-in ---------------------------------------------------------------------


async def test_register_and_local_login_like_the_client(main_server: ServerProcess) -> None:
    async with http_to(main_server) as http:
        email = await register(http)
        account = await login(http, email)
        me = await http.get("/auth/me", headers=account.headers)
        assert me.status_code == 200
        assert me.json()["id"] == account.user_id
        # After login the client asks whether E2EE is on before its first sync.
        status = await http.get("/api/e2ee/status", headers=account.headers)
        assert status.status_code == 200
        assert status.json()["isEnabled"] is False
        wrong = await http.post(
            "/auth/login/local", json={"email": email, "password": "not the password"}
        )
        assert wrong.status_code == 401
        assert wrong.json()["message"], "the client shows `message` to the user"


# ---- the early client's five-minute loop ------------------------------------------------------


async def change_sequence(http: httpx.AsyncClient, token: str) -> int:
    status = await http.get("/api/sync/status", headers=bearer(token))
    assert status.status_code == 200, status.text
    return int(status.json()["changeSequence"])


async def event_count(http: httpx.AsyncClient, token: str) -> int:
    events = await http.get("/api/sync/events?limit=200", headers=bearer(token))
    assert events.status_code == 200, events.text
    return len(events.json()["events"])


async def test_early_client_five_minute_loop(main_server: ServerProcess) -> None:
    async with http_to(main_server) as http_a, http_to(main_server) as http_b:
        email = await register(http_a)
        desk = EarlyClient(http_a, (await login(http_a, email)).access_token)
        desk.state = sample_state("desk")
        desk.sessions = {
            sid: {
                "id": sid,
                "originalText": "hi",
                "optimizedText": "Hello.",
                "templateId": "00000001-0000-0000-0000-000000000001",
                "templateName": "Professional",
                "providerId": str(uuid.UUID(int=0)),
                "providerName": "Pia Cloud",
                "wasTranscribed": False,
                "createdAt": o_format(),
                "tokensUsed": 12,
            }
            for sid in [str(uuid.uuid4())]
        }
        before = desk.snapshot()

        # Cycle 1 (first sync: lastSyncTimestamp and since are DateTime.MinValue).
        pushed, pulled = await desk.cycle()
        assert pushed["conflicts"] == []
        assert pushed["upserted"] == 7  # five entities, the session and the settings
        for name, records in before.items():
            assert {r["id"] for r in pulled[name]["upserted"]} == set(records), name
        provider = next(iter(pulled["providers"]["upserted"]))
        assert provider["apiKey"] == "sk-desk-secret", "the owner gets the provider key back"
        assert next(iter(pulled["templates"]["upserted"]))["ExampleText"] == "terse"
        assert len(pulled["sessions"]["added"]) == 1
        assert desk.snapshot() == before, "its own rows come back and change nothing"

        sequence = await change_sequence(http_a, desk.token)
        events = await event_count(http_a, desk.token)
        # A later client waiting on a conditional pull, to see whether anything wakes it.
        watcher = await http_b.get(
            "/api/sync/pull", params={"since": MIN_O, "limit": 500}, headers=desk.headers
        )
        etag = watcher.headers["etag"]

        # Cycle 2: the same full state again (settings freshly stamped): nothing changes.
        pushed, pulled = await desk.cycle()
        assert pushed["conflicts"] == []
        assert pushed["upserted"] == 0
        assert desk.snapshot() == before
        assert await change_sequence(http_a, desk.token) == sequence
        assert await event_count(http_a, desk.token) == events, "an identical re-send is silent"
        quiet = await http_b.get(
            "/api/sync/pull",
            params={"since": MIN_O, "limit": 500},
            headers={**desk.headers, "If-None-Match": etag},
        )
        assert quiet.status_code == 304, "an identical re-send must not wake other devices"

        # A second early desktop of the same user joins and picks everything up.
        laptop = EarlyClient(http_b, (await login(http_b, email)).access_token)
        pushed, _ = await laptop.cycle()
        assert pushed["upserted"] == 0, "its settings are the same as the stored ones"
        assert laptop.snapshot() == desk.snapshot()

        # The laptop edits a todo; the desk's next full push still carries the old copy.
        [todo_id] = laptop.state["todos"]
        laptop.state["todos"][todo_id] = {
            **laptop.state["todos"][todo_id],
            "title": "edited on the laptop",
            "updatedAt": o_format(),
        }
        pushed, _ = await laptop.cycle()
        assert pushed["upserted"] == 1
        pushed, pulled = await desk.cycle()
        [conflict] = pushed["conflicts"]
        assert conflict["entity"] == "todos"
        assert conflict["id"] == todo_id
        assert conflict["resolution"] == "server-wins", "the desk's copy is older"
        assert conflict["serverVersion"]["title"] == "edited on the laptop"
        # The pull (its own clock as cursor, with the server's overlap) brings the edit.
        assert desk.state["todos"][todo_id]["title"] == "edited on the laptop"
        assert desk.snapshot() == laptop.snapshot()

        # And converged: another round changes nothing anywhere.
        sequence = await change_sequence(http_a, desk.token)
        for device in (desk, laptop, desk):
            pushed, _ = await device.cycle()
            assert pushed["upserted"] == 0
            assert pushed["conflicts"] == []
        assert await change_sequence(http_a, desk.token) == sequence
        assert desk.snapshot() == laptop.snapshot()


# ---- E2EE: a second device joins by approval, encrypted sync, deletes ------------------------


async def approved_pair(
    http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> tuple[E2eeClient, E2eeClient, bytes]:
    """Two desktops signed in to one account: the first bootstraps, the second is approved."""
    email = await register(http_a)
    first_login, second_login = await login(http_a, email), await login(http_b, email)
    first = E2eeClient(http_a, first_login.access_token, first_login.user_id, device_name="Desk")
    boot = await first.bootstrap_first_device()
    status = await first.status()
    assert status["isEnabled"] is True
    assert status["hasRecoveryKey"] is True

    second = E2eeClient(
        http_b, second_login.access_token, second_login.user_id, device_name="Laptop"
    )
    registration = await second.register()
    assert registration.is_first_device is False
    assert await second.device_status() == 0, "pending until approved"
    waiting = await first.pending_devices()
    assert [d["deviceId"] for d in waiting] == [second.device_id]
    assert waiting[0]["onboardingSessionId"] == registration.onboarding_session_id
    await first.approve(second.device_id)
    assert await second.device_status() == 1
    # fetch_umk verifies the approver's signature against its listed key, like later clients.
    assert await second.fetch_umk() == boot.umk
    return first, second, boot.umk


def encrypted_state(device: E2eeClient, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(push collections, plaintexts by id): content only inside the ciphertext (E.6)."""
    stamp = o_format()
    ids = {kind: str(uuid.uuid4()) for kind in ("template", "provider", "memory", "todo", "col")}
    plain: dict[str, tuple[str, str, dict[str, Any]]] = {
        ids["template"]: (
            "templates",
            "template",
            {"Name": f"{label} tpl", "Prompt": "Be brief.", "StyleDescription": "short"},
        ),
        ids["provider"]: (
            "providers",
            "provider",
            {"Name": f"{label} key", "ProviderType": 1, "ApiKey": f"sk-{label}"},
        ),
        ids["memory"]: ("memories", "memory", {"Type": "fact", "Label": label, "Data": "{}"}),
        ids["todo"]: ("todos", "todo", {"Title": f"{label} todo", "Priority": 2, "Status": 0}),
        ids["col"]: ("kanbanColumns", "kanbanColumn", {"Name": "Doing"}),
    }
    defaults: dict[str, dict[str, Any]] = {
        "templates": {"createdAt": stamp, "modifiedAt": stamp},
        "providers": {
            "providerType": 0,
            "supportsToolCalling": True,
            "timeoutSeconds": 30,
            "createdAt": stamp,
            "updatedAt": stamp,
        },
        "memories": {"data": "{}", "createdAt": stamp, "updatedAt": stamp},
        "todos": {
            "priority": 0,
            "status": 0,
            "sortOrder": 1,
            "createdAt": stamp,
            "updatedAt": stamp,
        },
        "kanbanColumns": {
            "sortOrder": 1,
            "isDefaultView": False,
            "isClosedColumn": False,
            "createdAt": stamp,
            "updatedAt": stamp,
        },
    }
    collections: dict[str, Any] = {name: {"upserted": [], "deleted": []} for name in defaults}
    for entity_id, (collection, kind, payload) in plain.items():
        ciphertext, dek = device.encrypt(kind, entity_id, payload)
        collections[collection]["upserted"].append(
            {
                "id": entity_id,
                **defaults[collection],
                "encryptedPayload": ciphertext,
                "wrappedDek": dek,
            }
        )
    return collections, {eid: (kind, payload) for eid, (_, kind, payload) in plain.items()}


def e2ee_push_body(
    device: E2eeClient, collections: dict[str, Any], last_sync: str
) -> dict[str, Any]:
    return {
        "clientTimestamp": o_format(),
        "lastSyncTimestamp": last_sync,
        "deviceId": device.device_id,
        "isE2EEEncrypted": True,
        "settings": None,
        **collections,
    }


async def push(device: E2eeClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await device.request("POST", "/api/sync/push", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def pull(device: E2eeClient, since: str = MIN_O, **params: Any) -> dict[str, Any]:
    response = await device.request("GET", "/api/sync/pull", params={"since": since, **params})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_second_device_joins_by_approval_and_syncs_encrypted(
    main_server: ServerProcess,
) -> None:
    async with http_to(main_server) as http_a, http_to(main_server) as http_b:
        desk, laptop, _ = await approved_pair(http_a, http_b)
        collections, plain = encrypted_state(desk, "secret-marker")
        pushed = await push(desk, e2ee_push_body(desk, collections, MIN_BODY))
        assert pushed["conflicts"] == []
        assert pushed["upserted"] == len(plain)

        pulled = await pull(laptop)
        seen = 0
        for name in ("templates", "providers", "memories", "todos", "kanbanColumns"):
            for record in pulled[name]["upserted"]:
                kind, payload = plain[record["id"]]
                decrypted = laptop.decrypt(
                    kind, record["id"], record["encryptedPayload"], record["wrappedDek"]
                )
                assert decrypted == payload
                assert "secret-marker" not in str(
                    {k: v for k, v in record.items() if k not in ("encryptedPayload", "wrappedDek")}
                )
                seen += 1
        assert seen == len(plain)

        # With E2EE on, a plaintext push (say from a device not yet onboarded) is refused.
        plain_push = {
            "clientTimestamp": o_format(),
            "lastSyncTimestamp": MIN_BODY,
            "deviceId": laptop.device_id,
            "isE2EEEncrypted": False,
            "todos": {"upserted": [sample_todo("leaked title")], "deleted": []},
        }
        refused = await laptop.request("POST", "/api/sync/push", json=plain_push)
        assert refused.status_code == 403
        assert "e2ee_required" in refused.text


def sample_todo(title: str) -> dict[str, Any]:
    stamp = o_format()
    return {"id": str(uuid.uuid4()), "title": title, "createdAt": stamp, "updatedAt": stamp}


async def test_delete_on_one_device_reaches_the_other(main_server: ServerProcess) -> None:
    async with http_to(main_server) as http_a, http_to(main_server) as http_b:
        desk, laptop, _ = await approved_pair(http_a, http_b)
        collections, plain = encrypted_state(desk, "to-delete")
        first_push = e2ee_push_body(desk, collections, MIN_BODY)
        await push(desk, first_push)
        desk_cursor = (await pull(desk, MIN_O, limit=500))["serverTimestamp"]
        laptop_view = await pull(laptop)
        todo_id = laptop_view["todos"]["upserted"][0]["id"]
        template_id = laptop_view["templates"]["upserted"][0]["id"]

        # A later client deletes on the laptop: a delta push with the `deleted` lists.
        deletion = e2ee_push_body(
            laptop,
            {
                "todos": {"upserted": [], "deleted": [todo_id]},
                "templates": {"upserted": [], "deleted": [template_id]},
            },
            o_format(),
        )
        assert (await push(laptop, deletion))["deleted"] == 2

        # The desk (later client: the server's timestamp as cursor) learns of the deletes.
        changes = await pull(desk, desk_cursor, limit=500)
        assert changes["todos"]["deleted"] == [todo_id]
        assert changes["templates"]["deleted"] == [template_id]
        assert todo_id not in {r["id"] for r in changes["todos"]["upserted"]}
        # An early-style full push that still holds them must not bring them back.
        stale = await push(desk, e2ee_push_body(desk, collections, o_format()))
        resolutions = {(c["id"], c["resolution"]) for c in stale["conflicts"]}
        assert resolutions == {(todo_id, "deleted"), (template_id, "deleted")}
        everything = await pull(laptop)
        assert todo_id in everything["todos"]["deleted"]
        assert todo_id not in {r["id"] for r in everything["todos"]["upserted"]}
        assert template_id in everything["templates"]["deleted"]
        remaining = {r["id"] for r in everything["memories"]["upserted"]}
        assert remaining == {eid for eid, (kind, _) in plain.items() if kind == "memory"}


# ---- conflicts, as configured -----------------------------------------------------------------

T1, T2, T3 = (f"2026-03-27T12:00:0{n}.123456{n}Z" for n in (1, 2, 3))


def todo_push(todo_id: str, title: str, stamp: str, last_sync: str) -> dict[str, Any]:
    return {
        "clientTimestamp": o_format(),
        "lastSyncTimestamp": last_sync,
        "deviceId": str(uuid.uuid4()),
        "isE2EEEncrypted": False,
        "todos": {
            "upserted": [
                {
                    "id": todo_id,
                    "title": title,
                    "priority": 0,
                    "status": 0,
                    "sortOrder": 0,
                    "createdAt": T1,
                    "updatedAt": stamp,
                }
            ],
            "deleted": [],
        },
    }


async def push_plain(http: httpx.AsyncClient, account: Account, body: dict[str, Any]) -> Any:
    response = await http.post("/api/sync/push", json=body, headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def server_todo(http: httpx.AsyncClient, account: Account, todo_id: str) -> dict[str, Any]:
    response = await http.get("/api/sync/pull", params={"since": MIN_O}, headers=account.headers)
    assert response.status_code == 200, response.text
    [todo] = [t for t in response.json()["todos"]["upserted"] if t["id"] == todo_id]
    return dict(todo)


async def test_conflict_last_write_wins_by_default(main_server: ServerProcess) -> None:
    async with http_to(main_server) as http:
        email = await register(http)
        desk, laptop = await login(http, email), await login(http, email)
        todo_id = str(uuid.uuid4())
        laptop_last_sync = o_format()  # the laptop's last cycle, before the desk's change
        assert (await push_plain(http, desk, todo_push(todo_id, "desk", T2, MIN_BODY)))[
            "conflicts"
        ] == []

        older = await push_plain(http, laptop, todo_push(todo_id, "laptop old", T1, MIN_BODY))
        [conflict] = older["conflicts"]
        assert (conflict["entity"], conflict["id"]) == ("todos", todo_id)
        assert conflict["resolution"] == "server-wins"
        assert conflict["serverVersion"]["title"] == "desk"
        assert older["upserted"] == 0
        assert (await server_todo(http, desk, todo_id))["title"] == "desk"

        newer = await push_plain(
            http, laptop, todo_push(todo_id, "laptop new", T3, laptop_last_sync)
        )
        [conflict] = newer["conflicts"]
        assert conflict["resolution"] == "client-wins", "it overrode a change it had not seen"
        stored = await server_todo(http, desk, todo_id)
        assert (stored["title"], stored["updatedAt"]) == ("laptop new", T3)

        # The desk's next full-state push still carries T2: refused, the newer copy stays.
        stale = await push_plain(http, desk, todo_push(todo_id, "desk", T2, o_format()))
        assert [c["resolution"] for c in stale["conflicts"]] == ["server-wins"]
        assert (await server_todo(http, laptop, todo_id))["title"] == "laptop new"


async def test_conflict_server_wins_when_configured(server_wins_server: ServerProcess) -> None:
    async with http_to(server_wins_server) as http:
        email = await register(http)
        desk, laptop = await login(http, email), await login(http, email)
        laptop_last_sync = o_format()  # the laptop synced before the desk's change
        todo_id = str(uuid.uuid4())
        await push_plain(http, desk, todo_push(todo_id, "desk", T1, MIN_BODY))

        # Newer by timestamp, but the server changed after the laptop's last sync: refused.
        refused = await push_plain(http, laptop, todo_push(todo_id, "laptop", T2, laptop_last_sync))
        [conflict] = refused["conflicts"]
        assert (conflict["id"], conflict["resolution"]) == (todo_id, "server-wins")
        assert conflict["serverVersion"]["title"] == "desk"
        assert (await server_todo(http, laptop, todo_id))["title"] == "desk"

        # Once the laptop has pulled (its cursor is past the change), its edit goes through.
        await asyncio.sleep(0.01)
        accepted = await push_plain(http, laptop, todo_push(todo_id, "laptop", T3, o_format()))
        assert accepted["conflicts"] == []
        assert (await server_todo(http, desk, todo_id))["title"] == "laptop"

        # A delete from a device that has not seen that edit is refused too.
        delete = {
            "clientTimestamp": o_format(),
            "lastSyncTimestamp": laptop_last_sync,
            "isE2EEEncrypted": False,
            "todos": {"upserted": [], "deleted": [todo_id]},
        }
        result = await push_plain(http, desk, delete)
        assert [c["resolution"] for c in result["conflicts"]] == ["server-wins"]
        assert (await server_todo(http, desk, todo_id))["title"] == "laptop"


# ---- refresh-token rotation across access-token expiries ------------------------------------


async def wait_until_expired(token: str) -> None:
    delay = jwt_expiry(token) - time.time() + 0.05
    if delay > 0:
        await asyncio.sleep(delay)


async def refresh(http: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await http.post("/auth/refresh", json={"refreshToken": refresh_token})


async def test_refresh_rotation_across_expiries(short_token_server: ServerProcess) -> None:
    async with http_to(short_token_server) as http:
        account = await new_account(http)
        access, current = account.access_token, account.refresh_token
        rotated: list[str] = []
        for cycle in range(3):
            assert (await http.get("/auth/me", headers=bearer(access))).status_code == 200
            await wait_until_expired(access)
            for path in ("/auth/me", f"/api/sync/pull?since={MIN_O}"):
                expired = await http.get(path, headers=bearer(access))
                assert expired.status_code == 401, (cycle, path, expired.text)
                assert expired.json()["error"] == "token_expired"
                assert expired.headers["www-authenticate"].startswith("Bearer")
            renewed = await refresh(http, current)
            assert renewed.status_code == 200, renewed.text
            pair = renewed.json()
            assert pair["refreshToken"] != current
            if cycle == 0:
                # A client racing itself presents the old one again at once: still honoured.
                raced = await refresh(http, current)
                assert raced.status_code == 200, raced.text
            rotated.append(current)
            access, current = pair["accessToken"], pair["refreshToken"]
            me = await http.get("/auth/me", headers=bearer(access))
            assert me.status_code == 200
            assert me.json()["id"] == account.user_id
            pulled = await http.get(f"/api/sync/pull?since={MIN_O}", headers=bearer(access))
            assert pulled.status_code == 200

        # Long past the 1 s grace: the first rotated token is refused and revokes the family.
        replay = await refresh(http, rotated[0])
        assert replay.status_code == 401
        assert replay.json()["error"] == "refresh_token_reused"
        after = await refresh(http, current)
        assert after.status_code == 401, "the whole family is revoked after a reuse"
        # Signing in again starts a fresh family.
        assert (await refresh(http, (await login(http, account.email)).refresh_token)).is_success


async def test_refresh_reuse_without_grace_revokes_the_family(
    no_grace_server: ServerProcess,
) -> None:
    async with http_to(no_grace_server) as http:
        account = await new_account(http)
        renewed = await refresh(http, account.refresh_token)
        assert renewed.status_code == 200
        newest = renewed.json()["refreshToken"]
        reused = await refresh(http, account.refresh_token)
        assert reused.status_code == 401
        assert reused.json()["error"] == "refresh_token_reused"
        assert (await refresh(http, newest)).status_code == 401
        other_family = await login(http, account.email)
        assert (await refresh(http, other_family.refresh_token)).status_code == 200


# ---- the AI proxy ----------------------------------------------------------------------------


async def test_optimize_through_the_ai_proxy(
    main_server: ServerProcess, fake_llm: RunningUpstream
) -> None:
    async with http_to(main_server) as http:
        account = await new_account(http)
        # The early client's body: anonymous-object member names, templateId.ToString().
        body = {
            "text": "hey team release friday ok",
            "templateId": "00000001-0000-0000-0000-000000000001",
            "language": "EN",
            "isVoiceInput": False,
        }
        fake_llm.reset()
        fake_llm.scenario = Scenario(reply_text=REPLY, expected_api_key=UPSTREAM_KEY)
        response = await http.post("/api/ai/optimize", json=body, headers=account.headers)
        assert response.status_code == 200, response.text
        assert response.json()["optimizedText"] == REPLY
        sent = fake_llm.last_request
        assert sent.api_key == UPSTREAM_KEY
        assert "hey team release friday ok" in str(sent.body["messages"])

        # The user's own synced template is used as the prompt.
        desk = EarlyClient(http, account.access_token, state=sample_state("pirate"))
        await desk.cycle()
        [template_id] = desk.state["templates"]
        response = await http.post(
            "/api/ai/optimize", json={**body, "templateId": template_id}, headers=account.headers
        )
        assert response.status_code == 200, response.text
        assert "Rewrite this like a pirate would." in str(fake_llm.last_request.body["messages"])

        # Without a token (and anonymous use off) the proxy refuses.
        anonymous = await http.post("/api/ai/optimize", json=body)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "authentication_required"
