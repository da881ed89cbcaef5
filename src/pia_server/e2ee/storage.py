"""E2EE tables and queries (filled in by the E2EE issue).

Other domains rely on the two functions below; keep their names and signatures.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection


async def is_e2ee_enabled(conn: AsyncConnection, user_id: str) -> bool:
    """True once the account has a user master key (there is no way back to plaintext)."""
    return False


async def touch_device(conn: AsyncConnection, user_id: str, device_id: str) -> None:
    """Record that a known device of this user was seen now (``lastSeenAt``); unknown: no-op."""
    return None
