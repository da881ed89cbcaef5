"""sync tables and queries (filled in by the sync issue)."""

from __future__ import annotations
