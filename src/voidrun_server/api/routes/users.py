"""The calling user (CONTRACT §A.3)."""

from __future__ import annotations

from fastapi import APIRouter

from ...errors import NotFoundError
from ...schemas.accounts import Me, OrgRef
from ...store.repos import accounts as repo
from ..deps import Caller, Db

router = APIRouter(prefix="/api/users", tags=["Users"])


@router.get("/me", response_model=Me)
async def me(caller: Caller, session: Db) -> Me:
    user = await repo.user_by_id(session, caller.user_id)
    if user is None:
        raise NotFoundError("user not found")
    orgs = await repo.orgs_of_user(session, user.id)
    return Me(
        id=user.id,
        name=user.name,
        email=user.email,
        image_url=user.image_url,
        created_at=user.created_at,
        orgs=[OrgRef(id=o.id, name=o.name) for o in orgs],
    )
