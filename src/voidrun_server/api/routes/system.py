"""Unauthenticated service metadata: version, health, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ... import __version__
from ...schemas.accounts import Health, Version
from ...services import health as readiness
from ..deps import Ctx

router = APIRouter(prefix="/api", tags=["System"])
metrics_router = APIRouter(include_in_schema=False)


@router.get("/version", response_model=Version)
async def version() -> Version:
    return Version(version=__version__, commit="", build_time="")


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"description": "The database does not answer."}},
)
async def health(ctx: Ctx) -> Response:
    """Liveness and readiness: answers 200 only when the database answers."""
    if not await readiness.database_answers(ctx.engine):
        body = Health(status="unavailable", database="error")
        return JSONResponse(body.model_dump(by_alias=True, exclude_none=True), status_code=503)
    service = ctx.sandboxes
    body = Health(
        status="ok",
        database="ok",
        sandboxes="ok" if service is not None else ctx.sandboxes_unavailable,
        isolations=service.driver.describe() if service is not None else None,
    )
    return JSONResponse(body.model_dump(by_alias=True, exclude_none=True))


@metrics_router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)
