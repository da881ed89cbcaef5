"""e2ee routes (filled in by the e2ee issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["e2ee"])
