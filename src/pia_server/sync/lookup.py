"""What other domains may read of a user's synced data (filled in by the sync issue).

The AI proxy uses :func:`find_user_template` to build a prompt from the caller's own template.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection


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
    return None
