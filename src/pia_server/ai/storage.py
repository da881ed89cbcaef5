"""ai tables and queries (filled in by the ai issue)."""

from __future__ import annotations
