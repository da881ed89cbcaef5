"""Wire DTOs of the AI routes (camelCase out, any casing in)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pia_server.ai.templates import BuiltInTemplate
from pia_server.core.wire import WireModel


class OptimizeRequest(WireModel):
    text: str
    template_id: str | None = None
    # Listed by the API reference; the server picks the provider by mode, so it is ignored.
    provider_id: str | None = None
    language: str | None = None
    is_voice_input: bool = False
    custom_prompt: str | None = None
    custom_template_name: str | None = None
    stream: bool = False


class OptimizeResponse(WireModel):
    optimized_text: str
    # The API reference's name for the same text; the client reads ``optimizedText``.
    result: str
    input_tokens: int
    output_tokens: int
    model: str


class GeneratePromptRequest(WireModel):
    style_description: str


class GeneratePromptResponse(WireModel):
    prompt: str
    input_tokens: int
    output_tokens: int
    model: str


class TemplateOut(WireModel):
    id: str
    name: str
    prompt: str
    description: str

    @classmethod
    def of(cls, template: BuiltInTemplate) -> TemplateOut:
        return cls(
            id=template.id,
            name=template.name,
            prompt=template.prompt,
            description=template.description,
        )


class ModeStatus(WireModel):
    provider: str | None
    model: str | None
    available: bool


class StatusResponse(WireModel):
    available: bool
    allow_anonymous: bool
    modes: dict[str, ModeStatus] = Field(default_factory=dict)


# OpenAPI documentation of the chat bodies (the routes read the raw JSON themselves).
CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string", "description": "Ignored; the server picks the model."},
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "max_tokens": {"type": "integer"},
        "max_completion_tokens": {"type": "integer"},
        "stop": {},
    },
}
