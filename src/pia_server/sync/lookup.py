"""What other domains may read of a user's synced data (filled in by the sync issue).

The AI proxy uses :func:`find_user_template` to build a prompt from the caller's own template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.sync.storage import find_record


@dataclass(frozen=True, slots=True)
class UserTemplate:
    name: str | None
    prompt: str | None
    # True when the template is stored end-to-end encrypted: its prompt cannot be read here.
    encrypted: bool


async def find_user_template(
    conn: AsyncConnection, user_id: str, template_id: str
) -> UserTemplate | None:
    """The caller's own live (not deleted) template with this id, or ``None``."""
    try:
        canonical = str(UUID(template_id))
    except (ValueError, AttributeError, TypeError):
        return None
    found = await find_record(conn, user_id, "templates", canonical)
    if found is None:
        return None
    payload, deleted, encrypted = found
    if deleted:
        return None
    if encrypted:
        return UserTemplate(name=None, prompt=None, encrypted=True)
    data = json.loads(payload)
    name, prompt = data.get("name"), data.get("prompt")
    return UserTemplate(
        name=name if isinstance(name, str) else None,
        prompt=prompt if isinstance(prompt, str) else None,
        encrypted=False,
    )
