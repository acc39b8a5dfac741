"""Execution routes under /api/sandboxes/{id}/ (CONTRACT §A.5/§A.6)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/sandboxes", tags=["Execution"])
