"""``voidrun-server node``: load the drivers, re-adopt what runs here, destroy orphans,
register in the nodes table with a new epoch, then serve the internal API and the tunnel and
heartbeat until stopped.

Orphans are sandboxes this node still runs whose row is not live on this node (deleted, marked
``error`` after the node was declared lost, placed elsewhere, or never recorded): destroyed
before the node serves, so a restarted node leaves no process, mount or cgroup behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit

import anyio
import anyio.abc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from .. import datadir
from ..api import runtimes
from ..config import Settings
from ..drivers.base import DriverError
from ..drivers.driverset import DriverSet
from ..images.holdings import held_images
from ..services import images
from ..services.agents import AgentPool
from ..services.background import guarded, spawner
from ..services.image_builds import ImageBuilds
from ..services.node_images import NodeImages
from ..store import db
from ..store.repos import images as images_repo
from ..store.repos import nodes as repo
from ..store.tables import Node
from .images import NodeImageRoutes
from .internal import NodeApi
from .pools import NodePools
from .tunnel import TunnelServer

log = logging.getLogger(__name__)
LIVE = ("running", "paused", "stopped")


def node_id_of(settings: Settings) -> str:
    """``VOIDRUN_NODE_ID`` (else the host name) as a node id: lowercase letters, digits and
    dashes, at most 40 (a Kubernetes node name such as ``ip-10-0-0-7.ec2.internal`` becomes
    ``ip-10-0-0-7-ec2-internal``; ids go into host names when nodeId is emitted)."""
    raw = (settings.node_id or socket.gethostname()).lower()
    return re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:40].rstrip("-") or "node"


def capacity(settings: Settings) -> tuple[int, int, int]:
    """(cpu, mem MiB, disk MiB) placements may commit here."""
    cpu = settings.node_cpu or (os.cpu_count() or 1) * 32
    mem = settings.node_mem_mb
    if not mem:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = pages * size // 2**20 * 8
    disk = shutil.disk_usage(settings.data_dir).total // 2**20
    return cpu, mem, disk


def tunnel_address(settings: Settings) -> str:
    host = settings.node_tunnel_host or urlsplit(settings.resolved_node_url).hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{settings.resolved_tunnel_port}"


async def destroy_orphans(
    sessions: async_sessionmaker[AsyncSession], drivers: DriverSet, node_id: str
) -> list[str]:
    found = await drivers.recover()
    async with sessions() as session:
        rows = await repo.sandboxes_on(session, node_id)
    live = {row.id for row in rows if row.status in LIVE}
    orphans = [sandbox_id for sandbox_id in found if sandbox_id not in live]
    for sandbox_id in orphans:
        log.warning("node %s: destroying orphan sandbox %s (no live row here)", node_id, sandbox_id)
        try:
            await drivers.destroy(sandbox_id)
        except DriverError as exc:
            log.error("could not destroy orphan %s: %s", sandbox_id, exc)
    return orphans


def create_node_app(settings: Settings) -> Starlette:
    token = settings.node_token_value
    if not token:
        raise ValueError("VOIDRUN_NODE_TOKEN is required for `voidrun-server node`")
    node_id = node_id_of(settings)
    api = NodeApi(
        node_id, None, token, settings.images_root, settings.sandbox_ready_timeout_seconds
    )
    engine = db.create_engine(settings.resolved_database_url)
    sessions = db.session_factory(engine)
    node_images = NodeImages(settings, sessions, node_id)
    api.images = image_routes = NodeImageRoutes(node_images)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        datadir.prepare(settings)
        await db.migrate(engine)
        drivers, why, _assets = await runtimes.load_drivers(settings)
        if drivers is None:
            api.unavailable = why or "no driver"
            log.error("node %s cannot run sandboxes: %s", node_id, why)
        try:
            async with anyio.create_task_group() as group:
                builds = ImageBuilds(settings, sessions, spawner(group), node_id=node_id)
                await builds.recover()
                await node_images.sweep()
                image_routes.builds = builds
                if drivers is not None:
                    api.drivers = drivers
                    async with db.transaction(sessions) as session:
                        await images.sync_system_images(
                            session, settings.images_root, deactivate=False
                        )
                    group.start_soon(guarded, "sandbox network", drivers.serve_network)
                    await destroy_orphans(sessions, drivers, node_id)
                    # after the orphan sweep: pooled sandboxes have no row and look like orphans
                    agents = AgentPool(group, settings.sandbox_ready_timeout_seconds)
                    api.pools = NodePools(settings, drivers, agents)
                    api.pools.start(group, partial(images.default_rootfs, settings, sessions))
                    tunnel = TunnelServer(drivers, token)
                    started = anyio.Event()
                    group.start_soon(
                        guarded,
                        "tunnel",
                        tunnel.serve,
                        settings.host,
                        settings.resolved_tunnel_port,
                        started.set,
                    )
                    await started.wait()
                epoch = await register(settings, sessions, node_id)
                log.info("node %s registered, epoch %d", node_id, epoch)
                group.start_soon(
                    guarded, "heartbeat", heartbeat_forever, settings, sessions, node_id, epoch
                )
                try:
                    yield
                finally:
                    node_images.stop.set()
                    builds.shutdown()
                    if api.pools is not None:
                        await api.pools.drain()
                        api.pools.agents.close_all()
                    group.cancel_scope.cancel()
        finally:
            await engine.dispose()

    return Starlette(routes=api.routes(), lifespan=lifespan)


async def register(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], node_id: str
) -> int:
    cpu, mem, disk = capacity(settings)
    row = Node(
        id=node_id,
        url=settings.resolved_node_url,
        tunnel=tunnel_address(settings),
        cpu=cpu,
        mem_mb=mem,
        disk_mb=disk,
        max_sandboxes=settings.node_max_sandboxes,
        committed_cpu=0,
        committed_mem_mb=0,
        sandbox_count=0,
        labels=dict(settings.node_labels),
    )
    async with db.transaction(sessions) as session:
        row.images = await held_images(await images_repo.bootable(session), settings.images_root)
        return await repo.register(session, row)


async def heartbeat_forever(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    node_id: str,
    epoch: int,
) -> None:
    while True:
        await anyio.sleep(settings.node_heartbeat_seconds)
        try:
            async with db.transaction(sessions) as session:
                held = await held_images(await images_repo.bootable(session), settings.images_root)
                mine = await repo.heartbeat(session, node_id, epoch, held)
            if not mine:
                log.error("node %s: the nodes row belongs to another process now", node_id)
        except Exception as exc:  # the database away for a moment: the next beat retries
            log.warning("node %s: heartbeat failed: %s", node_id, exc)
