"""Readiness (``GET /api/health``): the server is ready when its database answers."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from ..store import db

log = logging.getLogger(__name__)


async def database_answers(engine: AsyncEngine) -> bool:
    try:
        await db.ping(engine)
    except Exception as exc:  # any database failure means "not ready"
        log.warning("health check failed: %s", exc)
        return False
    return True
