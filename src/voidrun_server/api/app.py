"""``create_app(settings)``: the ASGI application and its lifespan."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__, datadir
from ..config import Settings
from ..drivers.driverset import DriverSet
from ..drivers.remote.fleet import Fleet
from ..services import accounts, images, keycache, networking, reconcile, streams
from ..services import fleet as placement
from ..services.agents import AgentPool
from ..services.background import guarded, spawner
from ..services.image_builds import ImageBuilds
from ..services.keycache import KeyCache
from ..services.placed_builds import PlacedBuilds
from ..services.port_relay import AgentPorts
from ..services.sandboxes import SandboxService
from ..services.storage import DiskFloor
from ..store import db
from . import dashboard, docs_ui, e2b, errors, interpreter, runtimes
from .deps import AppContext
from .mcp_server import McpEndpoint
from .mcp_server import routes as mcp_routes
from .middleware import EdgeMiddleware, HttpMetrics
from .preview_hosts import PreviewHostMiddleware, PreviewPathMiddleware
from .routes import (
    auth,
    commands,
    exec,
    files,
    insights,
    orgs,
    pty,
    sandboxes,
    sessions,
    snapshots,
    system,
    users,
)
from .routes import images as image_routes
from .routes import proxy as proxy_routes

if TYPE_CHECKING:
    from ..drivers.base import Driver

log = logging.getLogger(__name__)

CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CORS_HEADERS = ["Authorization", "Content-Type", "X-API-Key", "X-Org-ID"]


class VoidRunAPI(FastAPI):
    """FastAPI with one middleware layer (``EdgeMiddleware``) in place of its default seven.

    FastAPI's stack is ServerErrorMiddleware, its OpenTelemetry and body-limit layers, the
    user middleware, ExceptionMiddleware and AsyncExitStackMiddleware, each a coroutine call
    and most a closure per request. ``EdgeMiddleware`` does what those did here (the server
    configures no OpenTelemetry and no FastAPI body limit; its own limits are in the edge).
    ``add_middleware`` has no effect on this app: extend ``EdgeMiddleware`` instead.
    """

    edge: dict[str, Any]
    preview_domain: str = ""

    def build_middleware_stack(self) -> ASGIApp:
        # the path form of previews skips the router (api/preview_hosts.py)
        routes = PreviewPathMiddleware(self.router)
        edge = EdgeMiddleware(routes, exception_handlers=self.exception_handlers, **self.edge)
        if not self.preview_domain:
            return edge
        # preview hosts ({port}-{id}.<domain>) go to the proxy before the API sees them
        return PreviewHostMiddleware(edge, domain=self.preview_domain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        if self.root_path:
            scope["root_path"] = self.root_path
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)


def create_app(settings: Settings, *, driver: Driver | None = None) -> FastAPI:
    """The app. ``driver`` replaces the runtime ``settings.driver`` names; only tests pass one
    (``tests/support/hostdriver.py``), the server never does."""
    registry = CollectorRegistry()
    engine = db.create_engine(settings.resolved_database_url)
    ctx = AppContext(
        settings=settings,
        engine=engine,
        sessions=db.session_factory(engine),
        registry=registry,
        keys=_key_cache(settings),
    )
    mcp = McpEndpoint(settings) if settings.mcp_enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        datadir.prepare(settings)
        await db.migrate(engine)
        await _bootstrap(ctx)
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(
                    guarded,
                    "revoked streams",
                    streams.end_revoked_streams,
                    ctx.streams,
                    ctx.sessions,
                )
                if mcp is not None:  # before the first request: the SDK refuses until it runs
                    await task_group.start(mcp.run)
                agents = await _start_sandboxes(ctx, task_group, driver)
                await _start_image_builds(ctx, task_group)
                try:
                    yield
                finally:
                    if ctx.images is not None:
                        ctx.images.shutdown()
                    if ctx.sandboxes is not None:
                        await _flush_activity(ctx.sandboxes)
                    if ctx.sandboxes is not None:
                        for pool in ctx.sandboxes.pools.values():
                            await pool.drain()
                        if ctx.sandboxes.fleet is not None:
                            await ctx.sandboxes.fleet.aclose()
                        if ctx.sandboxes.row_versions is not None:
                            await ctx.sandboxes.row_versions.close()
                    ctx.sandboxes = None
                    if agents is not None:
                        agents.close_all()
                    task_group.cancel_scope.cancel()
        finally:
            await ctx.keys.close()
            await engine.dispose()

    app = VoidRunAPI(
        title="VoidRun API (self-hosted)",
        version=__version__,
        description="Self-hostable sandbox server speaking the VoidRun API.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # served from package data by docs_ui (FastAPI's loads a CDN)
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    errors.install(app)
    for router in (
        system.router,
        orgs.router,
        users.router,
        sandboxes.router,
        snapshots.router,
        exec.router,
        commands.router,
        sessions.router,
        pty.router,
        files.router,
        image_routes.router,
        proxy_routes.router,
        auth.router,
        insights.router,
    ):
        app.include_router(router)
    if settings.dashboard_enabled:
        app.include_router(dashboard.router(settings))
    if settings.metrics_enabled:
        app.include_router(system.metrics_router)
    app.router.routes.extend(docs_ui.routes(app.title, str(app.openapi_url)))
    if settings.e2b_enabled:
        e2b.mount(app, ctx).interpreter_hook = interpreter.e2b_hook(app)
    if mcp is not None:
        app.router.routes.extend(mcp_routes(mcp))
    app.edge = {
        "metrics": HttpMetrics(registry) if settings.metrics_enabled else None,
        "max_body": settings.max_json_body_bytes,
        "max_url": settings.max_url_bytes,
        "cors": {
            "allow_origins": settings.cors_origins,
            "allow_methods": CORS_METHODS,
            "allow_headers": CORS_HEADERS,
            "max_age": 600,
        },
    }
    app.preview_domain = settings.public_domain
    return app


async def _flush_activity(service: SandboxService) -> None:
    try:
        await service.activity.flush()
    except Exception as exc:  # shutting down: losing a few seconds of activity is harmless
        log.warning("could not record sandbox activity on shutdown: %s", exc)


def _key_cache(settings: Settings) -> KeyCache:
    size = settings.key_cache_size
    return KeyCache(keycache.source_for(settings.resolved_database_url) if size else None, size)


async def _start_sandboxes(
    ctx: AppContext, task_group: anyio.abc.TaskGroup, driver: Driver | None = None
) -> AgentPool | None:
    """Load the default driver, register built images, re-adopt sandboxes, start the watch
    loop; the other isolations start in the background (``runtimes.start_others``).

    A host that cannot run sandboxes still serves the account API; sandbox routes then answer
    503 with the reason and what to install.
    """
    settings = ctx.settings
    assets = None
    if settings.role == "api" and driver is None:
        return await _start_fleet(ctx, task_group)
    if driver is not None:
        drivers: DriverSet | None = runtimes.single(driver)
    else:
        drivers, why, assets = await runtimes.load_drivers(settings)
        if why is not None:
            ctx.sandboxes_unavailable = why
    if drivers is None:
        return None
    disk_floor = DiskFloor(
        settings.data_dir, settings.min_free_disk_mb, drivers.unwritten_disk_bytes
    )
    service, agents = await _sandbox_service(ctx, task_group, drivers, disk_floor)
    drivers.relay_ports(AgentPorts(service, task_group), always=settings.proxy_through_agent)

    def run_pool(name: str) -> None:
        pool = runtimes.warm_pool(settings, drivers, name, agents, disk_floor)
        if pool is not None:  # after reconcile: it destroys orphans, pooled ones look like them
            service.pools[name] = pool
            task_group.start_soon(guarded, f"{name} warm pool", pool.run_forever, default_rootfs)

    async def default_rootfs() -> Path | None:
        return await images.default_rootfs(ctx.settings, ctx.sessions)

    async def adopt(name: str) -> None:
        """A driver that started late: its network side, its sandboxes, its pool."""
        late = drivers.networked(name)
        if late is not None:
            task_group.start_soon(guarded, f"{name} network", late.serve_network)
        await reconcile.reconcile_on_start(service, name)
        run_pool(name)

    # the sandboxes' resolver, and their traffic in /metrics
    task_group.start_soon(guarded, "sandbox network", drivers.serve_network)
    if settings.metrics_enabled:
        ctx.registry.register(networking.UsageCollector(drivers.network_usage_snapshot))
    await reconcile.reconcile_on_start(service, drivers.default)
    task_group.start_soon(guarded, "reconcile", reconcile.watch_forever, service)
    task_group.start_soon(guarded, "sandbox activity", service.activity.flush_forever)
    run_pool(drivers.default)
    if assets is not None and drivers.starting:
        task_group.start_soon(
            guarded, "isolations", runtimes.start_others, settings, drivers, assets, adopt
        )
    ctx.sandboxes = service
    return agents


async def _sandbox_service(
    ctx: AppContext,
    task_group: anyio.abc.TaskGroup,
    drivers: DriverSet,
    disk_floor: DiskFloor,
    fleet: Fleet | None = None,
) -> tuple[SandboxService, AgentPool]:
    """The images built here registered, the agents' connection pool and the sandbox service
    over ``drivers`` (this host's, or the fleet's nodes)."""
    settings = ctx.settings
    if fleet is None:  # on a fleet the nodes hold the images (and register them)
        async with db.transaction(ctx.sessions) as session:
            await images.sync_system_images(session, settings.images_root)
    agents = AgentPool(task_group, connect_timeout=settings.sandbox_ready_timeout_seconds)
    service = SandboxService(
        settings,
        ctx.sessions,
        drivers,
        agents,
        spawn=spawner(task_group),
        disk_floor=disk_floor,
        fleet=fleet,
    )
    agents.on_violation = service.agent_violated
    return service, agents


async def _start_fleet(ctx: AppContext, task_group: anyio.abc.TaskGroup) -> AgentPool | None:
    """``VOIDRUN_ROLE=api``: no drivers here; every sandbox lives on a node daemon
    (``services/fleet.py``, ``drivers/remote``). Nodes re-adopt their own sandboxes, so no
    reconcile on start and no warm pool; the health check and auto-sleep still run."""
    settings = ctx.settings
    if not settings.node_token_value:
        ctx.sandboxes_unavailable = "VOIDRUN_ROLE=api needs VOIDRUN_NODE_TOKEN"
        return None
    fleet = placement.build_fleet(settings, ctx.sessions)
    drivers = DriverSet(dict.fromkeys(settings.isolations, fleet), default=settings.driver)
    disk_floor = DiskFloor(settings.data_dir, settings.min_free_disk_mb, lambda: 0)
    service, agents = await _sandbox_service(ctx, task_group, drivers, disk_floor, fleet)
    task_group.start_soon(guarded, "reconcile", placement.maintain_forever, service)
    task_group.start_soon(guarded, "sandbox activity", service.activity.flush_forever)
    task_group.start_soon(
        guarded, "node failures", placement.detect_forever, settings, ctx.sessions, fleet
    )
    ctx.sandboxes = service
    return agents


async def _start_image_builds(ctx: AppContext, task_group: anyio.abc.TaskGroup) -> None:
    """Image imports: what a previous run left building ends ``error`` before any new one."""
    fleet = ctx.sandboxes.fleet if ctx.sandboxes is not None else None
    placed = PlacedBuilds(ctx.settings, ctx.sessions, fleet) if fleet is not None else None
    builds = ImageBuilds(ctx.settings, ctx.sessions, spawner(task_group), placed=placed)
    await builds.recover()
    default_imports = ctx.settings.data_dir / "imports"
    if ctx.settings.image_import_dirs == [default_imports]:
        await anyio.to_thread.run_sync(
            functools.partial(default_imports.mkdir, mode=0o700, exist_ok=True)
        )
    ctx.images = builds


def dashboard_line(settings: Settings) -> str:
    if not settings.dashboard_enabled:
        return ""
    return f"  Dashboard: {settings.external_base_url}/ (sign in with this key)\n"


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
            f"  It is also saved in {ctx.settings.bootstrap_key_file} (mode 0600).\n"
            + dashboard_line(ctx.settings),
            flush=True,
        )
