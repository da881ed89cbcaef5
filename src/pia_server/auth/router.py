"""Auth routes (filled in by the auth issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["auth"])
