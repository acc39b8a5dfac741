"""Organization members and API keys (CONTRACT §A.2). The org always comes from the key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...schemas.accounts import (
    ApiKeyActivate,
    ApiKeyCreate,
    ApiKeyPublic,
    GeneratedApiKey,
    UserPublic,
)
from ...schemas.common import Envelope, MessageEnvelope, envelope
from ...services import accounts
from ..deps import Caller, Db

router = APIRouter(prefix="/api/orgs", tags=["Organizations"])


@router.get("/users", response_model=Envelope[list[UserPublic]])
async def list_members(caller: Caller, session: Db) -> dict[str, Any]:
    users = await accounts.members(session, caller.org_id)
    data = [UserPublic.model_validate(u).model_dump(by_alias=True, mode="json") for u in users]
    return envelope("users", data)


@router.get("/apikeys", response_model=list[ApiKeyPublic])
async def list_keys(caller: Caller, session: Db) -> list[ApiKeyPublic]:
    return [
        ApiKeyPublic.model_validate(k) for k in await accounts.list_keys(session, caller.org_id)
    ]


@router.post("/apikeys", response_model=GeneratedApiKey, status_code=200)
async def create_key(body: ApiKeyCreate, caller: Caller, session: Db) -> GeneratedApiKey:
    """Returns the plain key; it is never shown again (only its SHA-256 is stored)."""
    new = await accounts.create_key(session, caller.org_id, caller.user_id, body.key_name)
    return GeneratedApiKey(
        plain_key=new.plain,
        key_id=new.key.id,
        key_name=new.key.name,
        org_id=new.key.org_id,
        created_at=new.key.created_at,
    )


@router.delete("/apikeys/{key_id}", response_model=MessageEnvelope)
async def revoke_key(key_id: str, caller: Caller, session: Db) -> dict[str, Any]:
    await accounts.revoke_key(session, caller.org_id, key_id)
    return envelope("API key revoked")


@router.post("/apikeys/{key_id}/activate", response_model=MessageEnvelope)
async def activate_key(
    key_id: str, body: ApiKeyActivate, caller: Caller, session: Db
) -> dict[str, Any]:
    key = await accounts.set_key_active(session, caller.org_id, key_id, body.is_active)
    return envelope("API key activated" if key.is_active else "API key deactivated")


@router.patch("/apikeys/{key_id}/touch", response_model=MessageEnvelope)
async def touch_key(key_id: str, caller: Caller, session: Db) -> dict[str, Any]:
    await accounts.touch_key(session, caller.org_id, key_id)
    return envelope("API key touched")
