"""Images visible to the caller's org (CONTRACT §A.7): bare objects and arrays."""

from __future__ import annotations

from fastapi import APIRouter

from ...schemas.sandboxes import ImagePublic
from ...services import images
from ..deps import Caller, Db

router = APIRouter(prefix="/api/images", tags=["Images"])


@router.get("", response_model=list[ImagePublic])
async def list_images(caller: Caller, session: Db) -> list[ImagePublic]:
    return [ImagePublic.model_validate(i) for i in await images.visible(session, caller.org_id)]


@router.get("/name/{name}", response_model=ImagePublic)
async def image_by_name(name: str, caller: Caller, session: Db) -> ImagePublic:
    return ImagePublic.model_validate(await images.by_name(session, caller.org_id, name))


@router.get("/{image_id}", response_model=ImagePublic)
async def image_by_id(image_id: str, caller: Caller, session: Db) -> ImagePublic:
    return ImagePublic.model_validate(await images.by_id(session, caller.org_id, image_id))
