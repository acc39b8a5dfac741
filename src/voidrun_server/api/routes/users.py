"""The calling user (CONTRACT §A.3)."""

from __future__ import annotations

from fastapi import APIRouter

from ...schemas.accounts import Me, OrgRef
from ...services import accounts
from ..deps import Caller, Db

router = APIRouter(prefix="/api/users", tags=["Users"])


@router.get("/me", response_model=Me)
async def me(caller: Caller, session: Db) -> Me:
    user, orgs = await accounts.me(session, caller.user_id)
    return Me(
        id=user.id,
        name=user.name,
        email=user.email,
        image_url=user.image_url,
        created_at=user.created_at,
        orgs=[OrgRef(id=o.id, name=o.name) for o in orgs],
    )
