"""The API replica's side of a fleet (``VOIDRUN_ROLE=api``): where each sandbox lives, which
node a new one goes to, and which nodes stopped heartbeating.

Placement runs inside the create transaction (``store/repos/nodes.place``: the node's row is
locked and its committed resources recounted from the sandbox rows, so two replicas never
overcommit a node). Failure detection runs in every replica, one at a time: each pass takes a
PostgreSQL transaction-level advisory lock and skips when another replica holds it. A node
silent for ``suspect_after_misses`` heartbeats is ``suspect`` (no placements; its sandboxes
answer 503); after ``lost_after_seconds`` it is ``lost`` and its live sandboxes turn ``error``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import Settings
from ..drivers.remote.driver import NodeAddress, split_tunnel
from ..drivers.remote.fleet import Fleet
from ..errors import ServiceUnavailableError
from ..store.db import transaction
from ..store.repos import nodes as repo
from ..store.tables import Image, Node, Sandbox
from .lifecycle import Status

if TYPE_CHECKING:
    from .sandboxes import SandboxService

log = logging.getLogger(__name__)
# pg_try_advisory_xact_lock key of the failure detector (sha256("voidrun node failures")[:8])
DETECTOR_LOCK = int.from_bytes(bytes.fromhex("5c1e0f3a9b7d2c41"), "big", signed=True)
# pg_try_advisory_lock key of the health check / auto-sleep pass
MAINTENANCE_LOCK = int.from_bytes(bytes.fromhex("2b8e61d04a7c9f13"), "big", signed=True)


def suspect_after(settings: Settings) -> float:
    return settings.node_heartbeat_seconds * settings.node_suspect_after_misses


def build_fleet(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Fleet:
    async def locate_sandbox(sandbox_id: str) -> str | None:
        async with sessions() as session:
            return await repo.node_of(session, sandbox_id)

    async def locate_node(node_id: str) -> NodeAddress | None:
        async with sessions() as session:
            row = await repo.get(session, node_id)
        if row is None:
            return None
        host, port = split_tunnel(row.tunnel)
        return NodeAddress(row.id, row.url, host, port, row.state)

    return Fleet(
        settings.driver,
        settings.node_token_value,
        locate_sandbox,
        locate_node,
        timeout=settings.sandbox_ready_timeout_seconds + 30,
    )


GUESS_VIEW_SECONDS = 1.0


class NodeGuesser:
    """The node a create will most likely be placed on, from a view of the nodes table at most
    :data:`GUESS_VIEW_SECONDS` old (one query a second, outside any create's transaction):
    best of a few sampled by committed/total, counting this replica's own guesses since the
    view was read. A create boots there while its transaction places it, and
    ``repos.nodes.place`` tries that node first under its row lock, so a guess only decides
    where to look first: capacity is still checked in the transaction."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._rows: list[Node] = []
        self._read_at = -GUESS_VIEW_SECONDS
        self._reading = anyio.Lock()

    async def guess(
        self, *, cpu: int, mem_mb: int, region: str, image: Image, skip: Sequence[str] = ()
    ) -> str | None:
        async with self._reading:
            if anyio.current_time() - self._read_at >= GUESS_VIEW_SECONDS:
                async with self._sessions() as session:
                    self._rows = await repo.fresh(session, suspect_after(self._settings))
                self._read_at = anyio.current_time()
        rows = repo.candidates(self._rows, region=region, image_id=image.id, skip=skip)
        for row in repo.least_loaded(rows):
            if repo.fits(row, cpu, mem_mb):
                # the view's copy only (detached from any session): later guesses see it
                row.sandbox_count += 1
                row.committed_cpu += cpu
                row.committed_mem_mb += mem_mb
                return row.id
        return None


async def place(
    session: AsyncSession,
    settings: Settings,
    *,
    cpu: int,
    mem_mb: int,
    region: str,
    image: Image | None = None,
    skip: Sequence[str] = (),
    prefer: str | None = None,
) -> str:
    """The node a new sandbox goes to, reserved in ``session``'s transaction; ``skip``: nodes
    that just refused this create; ``image``: only nodes that hold it; ``prefer``: the node
    tried first (where the create already boots)."""
    node = await repo.place(
        session,
        cpu=cpu,
        mem_mb=mem_mb,
        fresh_within=suspect_after(settings),
        region=region,
        image_id=image.id if image is not None else None,
        skip=skip,
        prefer=prefer,
    )
    where = f" in region {region!r}" if region else ""
    if node is None and image is not None:
        await _copy_or_refuse(session, settings, image, cpu, mem_mb, region, skip)
    if node is None:
        raise ServiceUnavailableError(
            "No node has room for this sandbox",
            f"every ready node{where} is full or silent; add a node or free some room",
        )
    return node.id


class ImageElsewhere(Exception):  # noqa: N818 - not an error: the create copies, then retries
    """No node with room holds the image, but ``node`` has room and ``source`` holds it:
    the create copies it there (``Fleet.copy_image``) and is placed again."""

    def __init__(self, image_id: str, node: str, source: str) -> None:
        super().__init__(f"image {image_id}: copy from {source} to {node}")
        self.image_id, self.node, self.source = image_id, node, source


async def _copy_or_refuse(
    session: AsyncSession,
    settings: Settings,
    image: Image,
    cpu: int,
    mem_mb: int,
    region: str,
    skip: Sequence[str],
) -> None:
    """When no node that holds ``image`` had room: raise :class:`ImageElsewhere` if a node
    with room lacks it and a ready node anywhere holds it; a clear 503 if none holds it."""
    fresh = await repo.fresh(session, suspect_after(settings))
    ready = [row for row in fresh if repo.in_region(row, region)]
    lacking = [row for row in ready if row.images is not None and image.id not in row.images]
    roomy = [row for row in lacking if row.id not in skip and repo.fits(row, cpu, mem_mb)]
    holders = [row for row in fresh if row.images is not None and image.id in row.images]
    if roomy and holders and not image.layers:
        target, source = repo.least_loaded(roomy)[0], repo.least_loaded(holders)[0]
        raise ImageElsewhere(image.id, target.id, source.id)
    if lacking and len(lacking) == len(ready) and not holders:
        where = f" in region {region!r}" if region else ""
        raise ServiceUnavailableError(
            f"No ready node holds the image {image.name}:{image.tag}",
            f"nodes{where} without it: {', '.join(row.id for row in lacking)}; build or import "
            "it on one of them (nodes copy images from each other, and report theirs at each "
            "heartbeat)",
        )


async def detect_once(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> bool:
    """One failure-detection pass; False when another replica is running one."""
    async with transaction(sessions) as session:
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            got = await session.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": DETECTOR_LOCK}
            )
            if not got.scalar_one():
                return False
        changed = await repo.detect(
            session, suspect_after(settings), settings.node_lost_after_seconds
        )
        for node_id in changed.suspect:
            log.warning("node %s missed its heartbeats: suspect", node_id)
        for node_id in changed.lost:
            log.error("node %s is lost: its sandboxes are now error", node_id)
            await session.execute(
                update(Sandbox)
                .where(
                    Sandbox.node_id == node_id,
                    Sandbox.status.in_((Status.RUNNING, Status.PAUSED, Status.STOPPED)),
                )
                .values(status=Status.ERROR, error=f"its node {node_id} was lost")
            )
            await session.execute(
                update(Image)
                .where(Image.node_id == node_id, Image.status == "building")
                .values(status="error", active=False, error=f"its node {node_id} was lost")
            )
    return True


async def maintain_forever(service: SandboxService) -> None:
    """The health check and auto-sleep ladder (``reconcile``), one replica at a time: each
    pass holds a session-level advisory lock; a replica that does not get it skips the pass
    (every replica would otherwise inspect every sandbox and race on the same steps)."""
    from . import reconcile  # it imports the sandbox service, which imports this module

    interval = service.settings.auto_sleep_check_interval_seconds
    while True:
        await anyio.sleep(interval)
        try:
            async with service.sessions() as session:
                postgres = session.bind is not None and session.bind.dialect.name == "postgresql"
                if postgres:
                    got = await session.execute(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": MAINTENANCE_LOCK}
                    )
                    if not got.scalar_one():
                        continue
                try:
                    await reconcile.check_health(service)
                    await reconcile.auto_sleep(service)
                finally:
                    if postgres:
                        await session.execute(
                            text("SELECT pg_advisory_unlock(:key)"), {"key": MAINTENANCE_LOCK}
                        )
        except Exception:  # a failed pass must not end the loop; the next one retries
            log.exception("fleet maintenance pass failed")


async def detect_forever(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], fleet: Fleet
) -> None:
    while True:
        await anyio.sleep(settings.node_heartbeat_seconds)
        try:
            await detect_once(settings, sessions)
        except Exception:  # a failed pass must not end the loop
            log.exception("node failure detection failed")
