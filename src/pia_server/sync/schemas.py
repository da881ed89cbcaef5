"""Sync wire DTOs (the client's ``Sync*`` classes) and the registry of entity types.

Every entity DTO keeps unknown keys (``extra="allow"``) so that fields of newer clients round-trip;
``ExampleText`` on templates keeps its PascalCase name on the wire. Timestamps are ticks
(``WireTime``) and go back out with all 7 fractional digits and a ``Z``.

To add an entity type: write its DTO here and add one :class:`EntityType` to
:data:`ENTITY_TYPES`; the push request, the pull response, storage, quotas and status follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast
from uuid import UUID

from pydantic import AliasChoices, BeforeValidator, ConfigDict, Field, create_model

from pia_server.core.wire import WireList, WireModel, WireTime

EMPTY_GUID = UUID(int=0)


class EntityDto(WireModel):
    """Base of the synced entities: unknown keys are kept and sent back as they came."""

    model_config = ConfigDict(extra="allow")


class EncryptedDto(EntityDto):
    id: UUID
    encrypted_payload: str | None = None
    wrapped_dek: str | None = None


class SyncTemplate(EncryptedDto):
    name: str | None = None
    prompt: str | None = None
    description: str | None = None
    # [JsonPropertyName("ExampleText")] on the client's StyleDescription: PascalCase on the wire.
    example_text: str | None = Field(
        None,
        validation_alias=AliasChoices("ExampleText", "exampleText", "example_text"),
        serialization_alias="ExampleText",
    )
    created_at: WireTime = 0
    modified_at: WireTime | None = None


class SyncProvider(EncryptedDto):
    name: str | None = None
    provider_type: int = 0
    endpoint: str | None = None
    model_name: str | None = None
    api_key: str | None = None
    azure_deployment_name: str | None = None
    supports_tool_calling: bool = True
    timeout_seconds: int = 30
    created_at: WireTime = 0
    updated_at: WireTime = 0


class SyncSession(EncryptedDto):
    original_text: str | None = None
    optimized_text: str | None = None
    template_id: UUID = EMPTY_GUID
    template_name: str | None = None
    provider_id: UUID = EMPTY_GUID
    provider_name: str | None = None
    was_transcribed: bool = False
    created_at: WireTime = 0
    tokens_used: int = 0


class SyncMemory(EncryptedDto):
    type: str | None = None
    label: str | None = None
    data: str | None = "{}"
    created_at: WireTime = 0
    updated_at: WireTime = 0
    last_accessed_at: WireTime = 0


class SyncTodo(EncryptedDto):
    title: str | None = None
    notes: str | None = None
    priority: int = 0
    status: int = 0
    due_date: WireTime | None = None
    linked_reminder_id: str | None = None
    created_at: WireTime = 0
    completed_at: WireTime | None = None
    updated_at: WireTime = 0
    sort_order: int | float = 0
    column_id: UUID | None = None


class SyncKanbanColumn(EncryptedDto):
    name: str | None = None
    sort_order: int | float = 0
    is_default_view: bool = False
    is_closed_column: bool = False
    created_at: WireTime = 0
    updated_at: WireTime = 0


class SyncPersona(EncryptedDto):
    """A later client's user persona. Fields not declared here (``archetype``, ``toolScope``,
    ``emoji``, ...) round-trip as they came."""

    name: str | None = None
    tagline: str | None = None
    system_prompt: str | None = None
    guardrails: str | None = None
    output_format: str | None = None
    expertise: list[Any] | None = None
    created_at: WireTime = 0
    updated_at: WireTime = 0


class SyncScheduledJob(EncryptedDto):
    """A later client's scheduled job. Its schedule fields (``recurrence``, ``timeOfDay`` as
    ``HH:mm:ss``, ``specificDate``, ...) round-trip as they came."""

    owner_device_id: str | None = None
    name: str | None = None
    query: str | None = None
    created_at: WireTime = 0
    updated_at: WireTime = 0


class SyncSettings(EntityDto):
    default_output_action: int = 0
    default_template_id: UUID | None = None
    whisper_model: int = 0
    start_in_advanced_mode: bool = False
    auto_type_delay_ms: int = 10
    theme: int = 0
    start_minimized: bool = False
    target_language: int | None = None
    target_speech_language: int = 0
    default_window_mode: int = 0
    # Dictionary<int, Guid>: string keys "0", "1", "2".
    mode_provider_defaults: dict[str, UUID] | None = Field(default_factory=dict)
    use_same_provider_for_all_modes: bool = True
    modified_at: WireTime = 0
    encrypted_payload: str | None = None
    wrapped_dek: str | None = None


@dataclass(frozen=True)
class EntityType:
    """One synced entity type: how it travels and how the store treats it."""

    name: str  # wire name of the collection and the stored ``entity`` value
    model: type[EntityDto]
    # The entity's own timestamp that last-write-wins compares (ticks).
    timestamp: Callable[[Any], int]
    # Fields that carry user content (refused in plaintext for E2EE accounts).
    content_fields: tuple[str, ...]
    # Sessions: immutable, pushed as ``added``.
    append_only: bool = False
    # Settings: one per user, not a collection.
    singleton: bool = False
    # A plaintext secret kept out of the payload and encrypted at rest (python field name).
    secret_field: str | None = None
    # Settings: a newer timestamp with unchanged plaintext content is not a change (the early
    # client stamps settings with "now" on every push).
    compare_content: bool = False

    @property
    def items_key(self) -> str:
        return "added" if self.append_only else "upserted"

    @property
    def attr(self) -> str:
        """The attribute name on the push request model."""
        return "".join("_" + c.lower() if c.isupper() else c for c in self.name)


SETTINGS_ID = "settings"

ENTITY_TYPES: tuple[EntityType, ...] = (
    EntityType(
        "settings",
        SyncSettings,
        lambda s: s.modified_at,
        content_fields=tuple(
            f
            for f in SyncSettings.model_fields
            if f not in ("modified_at", "encrypted_payload", "wrapped_dek")
        ),
        singleton=True,
        compare_content=True,
    ),
    EntityType(
        "templates",
        SyncTemplate,
        lambda t: t.modified_at if t.modified_at is not None else t.created_at,
        content_fields=("name", "prompt", "description", "example_text"),
    ),
    EntityType(
        "providers",
        SyncProvider,
        lambda p: p.updated_at,
        content_fields=(
            "name",
            "provider_type",
            "endpoint",
            "model_name",
            "api_key",
            "azure_deployment_name",
        ),
        secret_field="api_key",
    ),
    EntityType(
        "sessions",
        SyncSession,
        lambda s: s.created_at,
        content_fields=(
            "original_text",
            "optimized_text",
            "template_id",
            "template_name",
            "provider_id",
            "provider_name",
            "tokens_used",
        ),
        append_only=True,
    ),
    EntityType(
        "memories",
        SyncMemory,
        lambda m: m.updated_at,
        content_fields=("type", "label", "data"),
    ),
    EntityType(
        "todos",
        SyncTodo,
        lambda t: t.updated_at,
        content_fields=("title", "notes", "priority", "status", "due_date", "linked_reminder_id"),
    ),
    EntityType(
        "kanbanColumns",
        SyncKanbanColumn,
        lambda k: k.updated_at,
        content_fields=("name",),
    ),
    # Later clients only; earlier ones send neither and ignore both in a pull.
    EntityType(
        "personas",
        SyncPersona,
        lambda p: p.updated_at,
        content_fields=(
            "name",
            "tagline",
            "system_prompt",
            "guardrails",
            "output_format",
            "expertise",
        ),
    ),
    EntityType(
        "scheduledJobs",
        SyncScheduledJob,
        lambda j: j.updated_at,
        content_fields=("name", "query"),
    ),
)
ENTITY_BY_NAME = {et.name: et for et in ENTITY_TYPES}
COLLECTION_TYPES = tuple(et for et in ENTITY_TYPES if not et.singleton)


def has_plaintext_content(et: EntityType, item: EntityDto) -> bool:
    """True when a record carries readable content, whatever the push's ``isE2EEEncrypted`` says.

    A plaintext record counts when any content field differs from its default. An encrypted
    record keeps its value-type fields at the client's defaults, so there only a readable text
    field (one whose default is null) beside the ciphertext counts, and only when not empty.
    """
    fields = type(item).model_fields
    encrypted = getattr(item, "encrypted_payload", None) is not None
    for name in et.content_fields:
        default = fields[name].get_default(call_default_factory=True)
        value = getattr(item, name)
        if encrypted and (default is not None or value in ("", [])):
            continue
        if value != default:
            return True
    return False


def _changes_model(et: EntityType) -> type[WireModel]:
    fields: dict[str, Any] = {
        et.items_key: (WireList[et.model], Field(default_factory=list)),  # type: ignore[name-defined]
        "deleted": (WireList[UUID], Field(default_factory=list)),
    }
    name = f"{et.model.__name__}Changes"
    return cast(type[WireModel], create_model(name, __base__=WireModel, **fields))


CHANGES_MODELS: dict[str, type[WireModel]] = {
    et.name: _changes_model(et) for et in COLLECTION_TYPES
}


def _none_to_empty_object(value: Any) -> Any:
    return {} if value is None else value


class _PushBase(WireModel):
    client_timestamp: WireTime | None = None
    last_sync_timestamp: WireTime | None = None
    device_id: str | None = Field(None, max_length=128)
    # The wire model's acronym rule gives "isE2EEEncrypted", as the client writes it.
    is_e2ee_encrypted: bool = False


def _push_model() -> type[_PushBase]:
    fields: dict[str, Any] = {}
    for et in ENTITY_TYPES:
        if et.singleton:
            fields[et.attr] = (et.model | None, None)
        else:
            model = CHANGES_MODELS[et.name]
            # An explicit null envelope reads as empty, as a missing one does.
            envelope = Annotated[model, BeforeValidator(_none_to_empty_object)]  # type: ignore[valid-type]
            fields[et.attr] = (envelope, Field(default_factory=model))
    return cast(type[_PushBase], create_model("SyncPushRequest", __base__=_PushBase, **fields))


SyncPushRequest = _push_model()


class SyncConflict(WireModel):
    entity: str
    id: UUID | None = None
    # The stored DTO (a provider's apiKey left out), or null for a tombstone.
    server_version: dict[str, Any] | None = None
    resolution: str
    reason: str = ""


class IdMapping(WireModel):
    entity: str
    index: int
    client_id: UUID
    server_id: UUID


class SyncPushResponse(WireModel):
    server_timestamp: WireTime
    conflicts: list[SyncConflict] = Field(default_factory=list)
    id_mappings: list[IdMapping] = Field(default_factory=list)
    upserted: int = 0
    deleted: int = 0
    unchanged: int = 0


class EntityStatus(WireModel):
    records: int
    bytes: int
    tombstones: int


class DeviceSeen(WireModel):
    device_id: str
    first_seen_at: WireTime
    last_seen_at: WireTime
    pushes: int


class SyncStatusResponse(WireModel):
    server_time: WireTime
    last_push_at: WireTime | None
    last_pull_at: WireTime | None
    change_sequence: int
    entities: dict[str, EntityStatus]
    total_records: int
    total_bytes: int
    devices: list[DeviceSeen]
    conflict_strategy: str
    e2ee_enabled: bool


class SyncEvent(WireModel):
    id: int
    event: str
    created_at: WireTime
    ip: str | None
    user_agent: str | None
    device_id: str | None
    provider: str | None
    details: dict[str, Any]


class SyncEventsResponse(WireModel):
    events: list[SyncEvent]
    has_more: bool
    next_before: int | None


class QuotaLimits(WireModel):
    records_per_type: dict[str, int]
    max_record_bytes: int
    max_total_bytes: int


class QuotaUsage(WireModel):
    records_per_type: dict[str, int]
    total_bytes: int


class SyncQuotaResponse(WireModel):
    limits: QuotaLimits
    usage: QuotaUsage


def _pull_model() -> type[WireModel]:
    """For the OpenAPI document only: pulls are assembled from stored JSON without it."""
    fields: dict[str, Any] = {
        "server_timestamp": (WireTime, ...),
        "has_more": (bool, False),
        "next_cursor": (str, ...),
    }
    for et in ENTITY_TYPES:
        if et.singleton:
            fields[et.attr] = (et.model | None, None)
        else:
            fields[et.attr] = (CHANGES_MODELS[et.name], ...)
    return cast(type[WireModel], create_model("SyncPullResponse", __base__=WireModel, **fields))


SyncPullResponse = _pull_model()
