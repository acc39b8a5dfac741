"""``create_app(settings)``: the ASGI application and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from .. import __version__
from ..config import Settings
from ..services import accounts
from ..store import db
from . import errors
from .deps import AppContext
from .middleware import HttpMetrics, RequestContextMiddleware
from .routes import orgs, system, users

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    registry = CollectorRegistry()
    engine = db.create_engine(settings.resolved_database_url)
    ctx = AppContext(
        settings=settings, engine=engine, sessions=db.session_factory(engine), registry=registry
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await db.migrate(engine)
        await _bootstrap(ctx)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="VoidRun API (self-hosted)",
        version=__version__,
        description="Self-hostable sandbox server speaking the VoidRun API.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    errors.install(app)
    for router in (system.router, orgs.router, users.router):
        app.include_router(router)
    if settings.metrics_enabled:
        app.include_router(system.metrics_router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Org-ID"],
        max_age=600,
    )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=HttpMetrics(registry) if settings.metrics_enabled else None,
        max_body=settings.max_json_body_bytes,
        max_url=settings.max_url_bytes,
    )
    return app


async def _bootstrap(ctx: AppContext) -> None:
    configured = ctx.settings.bootstrap_api_key
    async with db.transaction(ctx.sessions) as session:
        plain = await accounts.bootstrap(
            session,
            configured.get_secret_value() if configured else None,
            ctx.settings.bootstrap_key_file,
        )
    if plain:
        print(
            "\n  First start: created org 'default', user 'admin' and this API key "
            f"(shown once):\n\n    {plain}\n\n"
            f"  It is also saved in {ctx.settings.bootstrap_key_file} (mode 0600).\n",
            flush=True,
        )
