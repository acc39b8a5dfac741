"""Request-scoped dependencies: the app context, a database transaction, and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyHeader
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from .. import ids
from ..config import Settings
from ..errors import AuthenticationError, InvalidInputError, ServiceUnavailableError
from ..services import accounts, ui_sessions
from ..services.accounts import Principal
from ..services.image_builds import ImageBuilds
from ..services.keycache import Entry, KeyCache
from ..services.sandboxes import SandboxService
from ..services.streams import StreamRegistry
from ..store.db import transaction


@dataclass
class AppContext:
    """Everything long-lived that routes need, built once in ``create_app``."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    registry: CollectorRegistry
    sandboxes: SandboxService | None = None
    images: ImageBuilds | None = None
    sandboxes_unavailable: str = "the server is starting"
    streams: StreamRegistry = field(default_factory=StreamRegistry)
    keys: KeyCache = field(default_factory=lambda: KeyCache(None))

    def image_builds(self) -> ImageBuilds:
        if self.images is None:
            raise ServiceUnavailableError("Image imports are unavailable", "the server is starting")
        return self.images

    def sandbox_service(self) -> SandboxService:
        if self.sandboxes is None:
            raise ServiceUnavailableError("Sandboxes are unavailable", self.sandboxes_unavailable)
        return self.sandboxes


def app_context(connection: HTTPConnection) -> AppContext:
    ctx: AppContext = connection.app.state.ctx
    return ctx


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its
# thread pool, a thread hand-off (~0.1–0.3 ms) per dependency per request.
async def context(connection: HTTPConnection) -> AppContext:
    return app_context(connection)


async def db(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent."""
    async with app_context(connection).sessions() as session, session.begin():
        yield session


# Declared for the OpenAPI document. ``?apiKey=`` is not declared: it is read below for
# WebSockets only (browsers cannot set headers on a WebSocket). On HTTP routes a key in the URL
# would end up in proxy and access logs, so it is refused there like a missing key.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
QUERY_KEY = "apiKey"
NO_KEY = "authentication required (X-API-Key or Bearer token)"
SESSION_COOKIE = "voidrun_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
QUERY_KEY_ON_HTTP = (
    "?apiKey= is accepted only on WebSocket routes; send the key in the X-API-Key header"
)


async def principal(
    connection: HTTPConnection, header_key: Annotated[str | None, Depends(api_key_header)]
) -> Principal:
    """The caller, from ``X-API-Key`` or, on WebSockets only, ``?apiKey=``."""
    plain = header_key
    if not plain and connection.scope["type"] == "websocket":
        plain = connection.query_params.get(QUERY_KEY)
    if plain and connection.headers.get("authorization", "").lower().startswith("bearer "):
        raise InvalidInputError("provide either X-API-Key or Bearer token, not both")
    if not plain and SESSION_COOKIE in connection.cookies:
        return await session_principal(connection)
    if not plain:
        query_only = QUERY_KEY in connection.query_params
        raise AuthenticationError(NO_KEY, QUERY_KEY_ON_HTTP if query_only else None)
    return await authenticate(app_context(connection), plain)


async def session_principal(connection: HTTPConnection) -> Principal:
    """The caller of a dashboard session cookie (``services/ui_sessions.py``). Not declared in
    the OpenAPI document: it is the dashboard's way in, the API's is the key. Requests that
    change state must echo the session's CSRF token; a WebSocket must come from this origin."""
    ctx = app_context(connection)
    entry = await ui_sessions.resolve(ctx.sessions, ctx.keys, connection.cookies[SESSION_COOKIE])
    if connection.scope["type"] == "websocket":
        origin = connection.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != connection.headers.get("host"):
            raise AuthenticationError("the session cookie is accepted only from this origin")
    elif connection.scope["method"] not in SAFE_METHODS:
        ui_sessions.check_csrf(entry, connection.headers.get(CSRF_HEADER))
    return entry.principal


async def authenticate(ctx: AppContext, plain: str) -> Principal:
    """The principal of an API key, through the key cache (``services/keycache.py``); an
    unknown, revoked or inactive key raises ``AuthenticationError``."""
    interval = timedelta(seconds=ctx.settings.key_touch_interval_seconds)
    digest = ids.hash_api_key(plain)
    # A known key from memory, unless a key was revoked since (services/keycache.py).
    epoch = await ctx.keys.epoch()
    if epoch is not None:
        cached = ctx.keys.lookup(digest, interval)
        if cached is not None:
            return cached
    # Its own short transaction: the lastUsedAt write must not hold SQLite's write lock for the
    # whole request (services open transactions of their own).
    async with transaction(ctx.sessions) as session:
        found, used = await accounts.authenticate_digest(session, digest, interval)
    ctx.keys.add(digest, Entry(found, used), epoch)
    return found


# scope="function": commit before the response is sent. The default ("request") would commit
# after it, so a client could act on a 200 whose write is not visible yet (or later failed).
Db = Annotated[AsyncSession, Depends(db, scope="function")]
Caller = Annotated[Principal, Depends(principal)]
Ctx = Annotated[AppContext, Depends(context)]
