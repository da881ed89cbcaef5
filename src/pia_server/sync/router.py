"""sync routes (filled in by the sync issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["sync"])
