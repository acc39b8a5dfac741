"""Dashboard sign-in: an API key exchanged for an HttpOnly session cookie (docs/dashboard.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response

from ...errors import AuthenticationError
from ...schemas.auth import SessionCreate, SessionInfo
from ...schemas.common import MessageEnvelope, envelope
from ...services import ui_sessions
from ...services.keycache import SessionEntry
from ..deps import CSRF_HEADER, SESSION_COOKIE, Ctx, Db, app_context

router = APIRouter(prefix="/api/auth", tags=["Dashboard session"])


def _info(entry: SessionEntry) -> SessionInfo:
    p = entry.principal
    return SessionInfo(
        csrf_token=entry.csrf_token,
        expires_at=entry.expires_at,
        org_id=p.org_id,
        user_id=p.user_id,
        key_id=p.key_id,
    )


@router.post("/session", response_model=SessionInfo)
async def sign_in(body: SessionCreate, response: Response, session: Db, ctx: Ctx) -> SessionInfo:
    """Exchange an API key for a session cookie (HttpOnly, SameSite=Strict, Secure when the
    public URL is https). Send the returned ``csrfToken`` as ``X-CSRF-Token`` on every request
    that changes state; the cookie alone is refused there (403)."""
    settings = ctx.settings
    touch = timedelta(seconds=settings.key_touch_interval_seconds)
    new = await ui_sessions.sign_in(session, body.api_key, settings.session_ttl_seconds, touch)
    response.set_cookie(
        SESSION_COOKIE,
        new.plain_id,
        max_age=int(settings.session_ttl_seconds),
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.external_base_url.startswith("https://"),
    )
    return _info(new.entry)


@router.get("/session", response_model=SessionInfo)
async def current(request: Request) -> SessionInfo:
    """The signed-in session (its CSRF token again, after a page reload); 401 without one."""
    plain = request.cookies.get(SESSION_COOKIE)
    if not plain:
        raise AuthenticationError("not signed in")
    ctx = app_context(request)
    return _info(await ui_sessions.resolve(ctx.sessions, ctx.keys, plain))


@router.delete("/session", response_model=MessageEnvelope)
async def sign_out(request: Request, response: Response, session: Db) -> dict[str, Any]:
    """Sign out: the session ends on every server; the cookie is cleared."""
    plain = request.cookies.get(SESSION_COOKIE)
    if plain:
        ctx = app_context(request)
        try:
            entry = await ui_sessions.resolve(ctx.sessions, ctx.keys, plain)
        except AuthenticationError:
            entry = None  # already over: only the cookie is left to clear
        if entry is not None:
            ui_sessions.check_csrf(entry, request.headers.get(CSRF_HEADER))
            await ui_sessions.sign_out(session, plain)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return envelope("Signed out")
