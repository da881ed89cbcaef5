"""What the desktop client does over HTTP, for the end-to-end suites: accounts, the early
client's five-minute sync cycle (full-state push, then a pull with its own clock as cursor,
applied with its ``>=`` last-write-wins), and helpers for timestamps in .NET's formats."""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

PASSWORD = "correct horse battery staple"
# `DateTime.MinValue` as the client writes it: in a JSON body, and with ToString("O").
MIN_BODY = "0001-01-01T00:00:00"
MIN_O = "0001-01-01T00:00:00.0000000"
# Collections compared on one timestamp (templates fall back to createdAt).
LWW_COLLECTIONS = ("templates", "providers", "memories", "todos", "kanbanColumns")

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)?$")


def o_format(moment: datetime | None = None) -> str:
    """``DateTime.UtcNow.ToString("O")``: seven fractional digits and a ``Z``."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def ticks(stamp: str) -> int:
    """100 ns ticks since 0001-01-01 of a UTC timestamp as .NET writes it (no offset = UTC)."""
    match = _STAMP.match(stamp)
    assert match, f"not a .NET timestamp: {stamp!r}"
    seconds = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
    whole = (seconds - datetime(1, 1, 1, tzinfo=UTC)).days * 86_400 + (
        seconds - datetime(1, 1, 1, tzinfo=UTC)
    ).seconds
    fraction = int((match.group(2) or "").ljust(7, "0"))
    return whole * 10_000_000 + fraction


def jwt_expiry(token: str) -> int:
    """The ``exp`` claim of an access token, read without checking it (as a client may)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"])


@dataclass(frozen=True)
class Account:
    email: str
    user_id: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(http: httpx.AsyncClient, email: str | None = None) -> str:
    email = email or f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    created = await http.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert created.status_code == 201, created.text
    return email


async def login(http: httpx.AsyncClient, email: str) -> Account:
    """``POST /auth/login/local`` as the client sends it; checks what the client reads."""
    response = await http.post("/auth/login/local", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    user = body["user"]
    assert user["id"] == str(uuid.UUID(user["id"])), "lowercase hyphenated: it is in the E2EE AAD"
    assert user["provider"] == "local"
    return Account(email, user["id"], body["accessToken"], body["refreshToken"])


async def new_account(http: httpx.AsyncClient) -> Account:
    return await login(http, await register(http))


def sample_state(label: str, stamp: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """One of each entity the early client pushes, with its plaintext fields."""
    stamp = stamp or o_format()
    template_id, provider_id, memory_id, todo_id, column_id = (str(uuid.uuid4()) for _ in range(5))
    return {
        "templates": {
            template_id: {
                "id": template_id,
                "name": f"{label} template",
                "prompt": f"Rewrite this like a {label} would.",
                "description": "mine",
                "ExampleText": "terse",
                "createdAt": stamp,
                "modifiedAt": stamp,
            }
        },
        "providers": {
            provider_id: {
                "id": provider_id,
                "name": f"{label} OpenAI",
                "providerType": 1,
                "endpoint": "https://api.openai.com/v1",
                "modelName": "gpt-4o-mini",
                "apiKey": f"sk-{label}-secret",
                "azureDeploymentName": None,
                "supportsToolCalling": True,
                "timeoutSeconds": 30,
                "createdAt": stamp,
                "updatedAt": stamp,
            }
        },
        "memories": {
            memory_id: {
                "id": memory_id,
                "type": "fact",
                "label": f"{label} likes tea",
                "data": "{}",
                "createdAt": stamp,
                "updatedAt": stamp,
                "lastAccessedAt": stamp,
            }
        },
        "todos": {
            todo_id: {
                "id": todo_id,
                "title": f"{label} todo",
                "notes": None,
                "priority": 1,
                "status": 0,
                "dueDate": None,
                "linkedReminderId": None,
                "createdAt": stamp,
                "completedAt": None,
                "updatedAt": stamp,
                "sortOrder": 0,
                "columnId": column_id,
            }
        },
        "kanbanColumns": {
            column_id: {
                "id": column_id,
                "name": "Inbox",
                "sortOrder": 0,
                "isDefaultView": True,
                "isClosedColumn": False,
                "createdAt": stamp,
                "updatedAt": stamp,
            }
        },
    }


def sample_settings() -> dict[str, Any]:
    return {
        "defaultOutputAction": 0,
        "defaultTemplateId": None,
        "whisperModel": 1,
        "startInAdvancedMode": False,
        "autoTypeDelayMs": 10,
        "theme": 1,
        "startMinimized": False,
        "targetLanguage": 1,
        "targetSpeechLanguage": 0,
        "defaultWindowMode": 0,
        "modeProviderDefaults": {},
        "useSameProviderForAllModes": True,
        "modifiedAt": o_format(),
    }


def lww_stamp(collection: str, record: dict[str, Any]) -> int:
    if collection == "templates":
        return ticks(record.get("modifiedAt") or record["createdAt"])
    return ticks(record["updatedAt"])


@dataclass
class EarlyClient:
    """The early desktop client's sync loop (contract E.2-E.4), without E2EE."""

    http: httpx.AsyncClient
    token: str
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {name: {} for name in LWW_COLLECTIONS}
    )
    settings: dict[str, Any] = field(default_factory=sample_settings)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_sync: datetime | None = None

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def push_body(self) -> dict[str, Any]:
        """Full state every cycle, empty ``deleted`` lists, settings stamped now."""
        since = self.last_sync
        body: dict[str, Any] = {
            "clientTimestamp": o_format(),
            "lastSyncTimestamp": o_format(since) if since else MIN_BODY,
            "deviceId": self.device_id,
            "isE2EEEncrypted": False,
            "settings": {**self.settings, "modifiedAt": o_format()},
            "sessions": {
                "added": [
                    s
                    for s in self.sessions.values()
                    if since is None or ticks(s["createdAt"]) >= ticks(o_format(since))
                ],
                "deleted": [],
            },
        }
        for name in LWW_COLLECTIONS:
            body[name] = {"upserted": list(self.state[name].values()), "deleted": []}
        return body

    async def push(self) -> dict[str, Any]:
        response = await self.http.post(
            "/api/sync/push", json=self.push_body(), headers=self.headers
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def pull(self) -> dict[str, Any]:
        since = o_format(self.last_sync) if self.last_sync else MIN_O
        # ToString("O") pasted into the URL, not escaped.
        response = await self.http.get(f"/api/sync/pull?since={since}", headers=self.headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def apply(self, pulled: dict[str, Any]) -> None:
        """PullChangesAsync: settings unconditionally, ``remote >= local`` wins, deletes."""
        if pulled.get("settings") is not None:
            known = sample_settings().keys()  # the fields the client has
            self.settings = {k: v for k, v in pulled["settings"].items() if k in known}
        for name in LWW_COLLECTIONS:
            local = self.state[name]
            for remote in pulled[name]["upserted"]:
                mine = local.get(remote["id"])
                if mine is None or lww_stamp(name, remote) >= lww_stamp(name, mine):
                    local[remote["id"]] = remote
            if name != "kanbanColumns":  # the early client ignores deleted columns
                for deleted in pulled[name]["deleted"]:
                    local.pop(deleted, None)
        for session in pulled["sessions"]["added"]:
            self.sessions.setdefault(session["id"], session)
        for deleted in pulled["sessions"]["deleted"]:
            self.sessions.pop(deleted, None)

    async def cycle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """One five-minute cycle: push, pull, apply, then the cursor = the client's clock."""
        pushed = await self.push()
        pulled = await self.pull()
        self.apply(pulled)
        self.last_sync = datetime.now(UTC)
        return pushed, pulled

    def snapshot(self) -> dict[str, dict[str, tuple[int, str]]]:
        """What the user sees: per record its timestamp and content (server extras aside)."""
        out: dict[str, dict[str, tuple[int, str]]] = {}
        for name in LWW_COLLECTIONS:
            out[name] = {
                rid: (lww_stamp(name, rec), content_key(rec))
                for rid, rec in self.state[name].items()
            }
        return out


def content_key(record: dict[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in record.items() if k not in ("encryptedPayload", "wrappedDek")},
        sort_keys=True,
    )
