"""Sync DTOs as the real client writes them (camelCase, 7-digit timestamps, nulls written)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from pia_server.core.wire import TICKS_PER_SECOND, format_timestamp, now_ticks, parse_timestamp
from pia_server.e2ee import storage as e2ee_storage

MIN_VALUE = "0001-01-01T00:00:00"
ENVELOPES = ("templates", "providers", "memories", "todos", "kanbanColumns")


def enable_e2ee_for(monkeypatch: pytest.MonkeyPatch, user_id: str) -> None:
    """Make the e2ee domain report this user (only) as having E2EE enabled."""

    async def enabled(conn: Any, candidate: str) -> bool:
        return candidate == user_id

    monkeypatch.setattr(e2ee_storage, "is_e2ee_enabled", enabled)


def ts(seconds_from_now: float = 0.0, base: int | None = None) -> str:
    """A client timestamp (ticks precision), ``seconds_from_now`` from now."""
    ticks = (base if base is not None else now_ticks()) + int(seconds_from_now * TICKS_PER_SECOND)
    return format_timestamp(ticks)


def new_id() -> str:
    return str(uuid.uuid4())


def template(
    id_: str | None = None, *, modified: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "name": "Formal mail",
        "prompt": "Rewrite formally",
        "description": "for work",
        "ExampleText": "Dear Sir or Madam",
        "createdAt": "2026-03-27T12:34:56.1234567Z",
        "modifiedAt": modified,
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def provider(id_: str | None = None, *, updated: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "name": "My OpenAI",
        "providerType": 1,
        "endpoint": "https://api.openai.com/v1",
        "modelName": "gpt-4o-mini",
        "apiKey": "sk-test-SECRET-123",
        "azureDeploymentName": None,
        "supportsToolCalling": True,
        "timeoutSeconds": 30,
        "createdAt": "2026-03-01T08:00:00.0000001Z",
        "updatedAt": updated or ts(),
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def session(id_: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "originalText": "hello wrld",
        "optimizedText": "Hello, world.",
        "templateId": "00000001-0000-0000-0000-000000000001",
        "templateName": "Default",
        "providerId": new_id(),
        "providerName": "OpenAI",
        "wasTranscribed": False,
        "createdAt": ts(),
        "tokensUsed": 42,
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def memory(id_: str | None = None, *, updated: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "type": "fact",
        "label": "Favourite colour",
        "data": '{"value":"blue"}',
        "createdAt": ts(-60),
        "updatedAt": updated or ts(),
        "lastAccessedAt": "2026-05-19T00:00:00.0000000Z",
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def todo(id_: str | None = None, *, updated: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "title": "Buy milk",
        "notes": None,
        "priority": 2,
        "status": 0,
        "dueDate": "2026-04-01T00:00:00.0000000Z",
        "linkedReminderId": None,
        "createdAt": ts(-120),
        "completedAt": None,
        "updatedAt": updated or ts(),
        "sortOrder": 3,
        "columnId": None,
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def column(id_: str | None = None, *, updated: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "name": "Doing",
        "sortOrder": 1,
        "isDefaultView": False,
        "isClosedColumn": False,
        "createdAt": ts(-300),
        "updatedAt": updated or ts(),
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def persona(id_: str | None = None, *, updated: str | None = None, **extra: Any) -> dict[str, Any]:
    """A later client's ``SyncPersona``, every field it writes."""
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "name": "Patient tutor",
        "tagline": "Explains twice",
        "systemPrompt": "You are a patient tutor.",
        "guardrails": "No homework answers.",
        "outputFormat": "Markdown",
        "expertise": ["maths", "physics"],
        "archetype": "Teacher",
        "modelType": "fast",
        "emoji": "\U0001f9d1\u200d\U0001f3eb",
        "accentColor": "#3366ff",
        "toolScope": 2,
        "preferredProviderId": new_id(),
        "reasoningEffort": "medium",
        "schemaVersion": 1,
        "createdAt": ts(-600),
        "updatedAt": updated or ts(),
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def scheduled_job(
    id_: str | None = None, *, updated: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A later client's ``SyncScheduledJob``, every field it writes."""
    body: dict[str, Any] = {
        "id": id_ or new_id(),
        "ownerDeviceId": "device-a",
        "createdAt": ts(-600),
        "updatedAt": updated or ts(),
        "name": "Morning news",
        "query": "Summarise the news on solar power",
        "kind": "research",
        "answerLength": "short",
        "providerId": new_id(),
        "recurrence": "weekly",
        "timeOfDay": "08:30:00",
        "dayOfWeek": 1,
        "dayOfMonth": None,
        "month": None,
        "specificDate": None,
        "status": "active",
    }
    body.update(extra)
    return body


def settings_dto(modified: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "defaultOutputAction": 1,
        "defaultTemplateId": None,
        "whisperModel": 2,
        "startInAdvancedMode": False,
        "autoTypeDelayMs": 10,
        "theme": 1,
        "startMinimized": False,
        "targetLanguage": 1,
        "targetSpeechLanguage": 0,
        "defaultWindowMode": 0,
        "modeProviderDefaults": {"0": "6f9619ff-8b86-d011-b42d-00c04fc964ff"},
        "useSameProviderForAllModes": True,
        "modifiedAt": modified or ts(),
        "encryptedPayload": None,
        "wrappedDek": None,
    }
    body.update(extra)
    return body


def push_body(
    *,
    settings: dict[str, Any] | None = None,
    last_sync: str = MIN_VALUE,
    device_id: str | None = "device-a",
    e2ee: bool = False,
    sessions: list[dict[str, Any]] | None = None,
    deleted: dict[str, list[str]] | None = None,
    **collections: list[dict[str, Any]],
) -> dict[str, Any]:
    """A ``SyncPushRequest``; pass ``templates=[...]`` etc. (``kanbanColumns`` by that name)."""
    deleted = deleted or {}
    body: dict[str, Any] = {
        "clientTimestamp": ts(),
        "lastSyncTimestamp": last_sync,
        "deviceId": device_id,
        "isE2EEEncrypted": e2ee,
        "settings": settings,
    }
    # The later client's types (personas, scheduledJobs) only when a test names them.
    names = dict.fromkeys([*ENVELOPES, *collections, *deleted])
    names.pop("sessions", None)
    for name in names:
        body[name] = {"upserted": collections.get(name, []), "deleted": deleted.get(name, [])}
    body["sessions"] = {"added": sessions or [], "deleted": deleted.get("sessions", [])}
    return body


async def push(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any], status: int = 200
) -> dict[str, Any]:
    response = await client.post("/api/sync/push", json=body, headers=headers)
    assert response.status_code == status, response.text
    data = response.json()
    assert isinstance(data, dict)
    return data


async def pull(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    since: str | None = None,
    status: int = 200,
    **params: Any,
) -> dict[str, Any]:
    query = {k: v for k, v in params.items() if v is not None}
    if since is not None:
        query["since"] = since
    response = await client.get("/api/sync/pull", params=query, headers=headers)
    assert response.status_code == status, response.text
    data = response.json()
    assert isinstance(data, dict)
    return data


def ids(pulled: dict[str, Any], entity: str) -> set[str]:
    key = "added" if entity == "sessions" else "upserted"
    return {item["id"] for item in pulled[entity][key]}


def ticks_of(text: str) -> int:
    return parse_timestamp(text)
