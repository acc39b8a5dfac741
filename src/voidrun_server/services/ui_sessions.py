"""Dashboard sessions: an API key exchanged for an opaque id kept in an HttpOnly cookie.

The id (256 random bits) is stored only as its SHA-256 digest (``ui_sessions``), with the key it
was made with, a CSRF token the page sends back in ``X-CSRF-Token`` on every state-changing
request, and an expiry (``session_ttl_seconds``). A session acts as its key: revoking or
deactivating the key ends it at the next request (the lookup joins the key, and the key epoch
empties the cache of every server, ``services/keycache.py``). Signing out bumps the epoch too,
so another replica stops honouring the id at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import AuthenticationError, PermissionDeniedError
from ..store.db import transaction
from ..store.repos import accounts as account_repo
from ..store.repos import ui_sessions as repo
from ..store.tables import UiSession
from ..store.types import utcnow
from . import accounts
from .accounts import Principal
from .keycache import KeyCache, SessionEntry

EXPIRED = "session expired or signed out: sign in again"
BAD_CSRF = "missing or wrong X-CSRF-Token header (required with the session cookie)"


@dataclass(frozen=True)
class NewSession:
    plain_id: str
    entry: SessionEntry


def digest(plain_id: str) -> str:
    return hashlib.sha256(plain_id.encode()).hexdigest()


async def sign_in(
    session: AsyncSession, plain_key: str, ttl_seconds: float, touch: timedelta
) -> NewSession:
    """A new session for a valid API key (``AuthenticationError`` otherwise)."""
    principal = await accounts.authenticate(session, plain_key, touch)
    now = utcnow()
    await repo.remove_expired(session, now)
    plain_id = secrets.token_urlsafe(32)
    row = UiSession(
        id_hash=digest(plain_id),
        key_id=principal.key_id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    await repo.add(session, row)
    return NewSession(plain_id, SessionEntry(principal, row.csrf_token, row.expires_at))


async def resolve(
    sessions: async_sessionmaker[AsyncSession], keys: KeyCache, plain_id: str
) -> SessionEntry:
    """The live session of a cookie value; ``AuthenticationError`` when expired, signed out
    or its key revoked or deactivated."""
    hashed = digest(plain_id)
    epoch = await keys.epoch()
    if epoch is not None:
        cached = keys.session(hashed)
        if cached is not None:
            return cached
    async with transaction(sessions) as session:
        found = await repo.live_with_key(session, hashed, utcnow())
    if found is None or not found[1].is_active:
        raise AuthenticationError(EXPIRED)
    row, key = found
    principal = Principal(key_id=key.id, org_id=key.org_id, user_id=key.created_by)
    entry = SessionEntry(principal, row.csrf_token, row.expires_at)
    keys.add_session(hashed, entry, epoch)
    return entry


def check_csrf(entry: SessionEntry, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(sent.encode(), entry.csrf_token.encode()):
        raise PermissionDeniedError(BAD_CSRF)


async def sign_out(session: AsyncSession, plain_id: str) -> None:
    """Forget the session everywhere (idempotent)."""
    if await repo.remove(session, digest(plain_id)):
        await account_repo.bump_key_epoch(session)
