"""Image imports on a fleet (``VOIDRUN_ROLE=api``): a replica holds no image files, so each
import runs on a node. The replica checks the request, picks the least loaded ready node,
records the ``building`` row with that ``node_id`` and asks the node to start
(``POST /internal/v1/images/{id}/build``). The node checks what only it can (the path is under
its ``VOIDRUN_IMAGE_IMPORT_DIRS``; a refusal removes the row and reaches the caller as the same
4xx), runs the build, writes its progress into the row and notes the image in its nodes row
when it is ready. Other nodes copy it from there when a create needs it elsewhere
(``services/node_images.py``). A build's log streams from its node; a delete removes the files
from every node that holds them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import Settings
from ..drivers.remote.fleet import Fleet
from ..errors import ServiceUnavailableError, VoidRunError
from ..schemas.images import ImageCreate
from ..store.repos import nodes as nodes_repo
from ..store.tables import Image
from .fleet import suspect_after

log = logging.getLogger(__name__)
LOG_WAIT = 15.0  # a log poll's longest wait on the node (then a keep-alive goes out)


class PlacedBuilds:
    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], fleet: Fleet
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.fleet = fleet

    async def pick_node(self) -> str:
        async with self.sessions() as session:
            fresh = await nodes_repo.fresh(session, suspect_after(self.settings))
        if not fresh:
            raise ServiceUnavailableError(
                "No ready node to import the image on", "start a node (voidrun-server node)"
            )
        return nodes_repo.least_loaded(fresh)[0].id

    async def start(
        self, row: Image, body: ImageCreate, forget: Callable[[str], Awaitable[None]]
    ) -> None:
        """Start ``row``'s build on its node; a refusal removes the row and is raised."""
        assert row.node_id is not None
        wire: dict[str, Any] = {"path": body.path, "source": body.source, "insecure": body.insecure}
        if body.credentials is not None:  # for this pull only, as on one box: never stored
            wire["credentials"] = {
                "username": body.credentials.username,
                "password": body.credentials.password.get_secret_value(),
            }
        try:
            await (await self.fleet.node(row.node_id)).build_image(row.id, wire)
        except VoidRunError:
            await forget(row.id)
            raise

    async def follow(self, row: Image) -> AsyncIterator[tuple[list[str], str, str | None]]:
        """``(lines, status, error)`` as the build on ``row``'s node goes, until it ends."""
        position = 0
        while True:
            try:
                assert row.node_id is not None
                node = await self.fleet.node(row.node_id, serving=False)
                data = await node.image_log(row.id, position, LOG_WAIT)
            except VoidRunError as exc:
                yield [], "error", f"the build's node is unreachable: {exc}"
                return
            position = int(data.get("position") or position)
            status, error = str(data.get("status")), data.get("error")
            yield [str(line) for line in data.get("lines") or []], status, error
            if status != "building":
                return

    async def holders(self, session: AsyncSession, row: Image) -> list[str]:
        """The nodes that may hold ``row``'s files (its builder, and those that report it)."""
        nodes = await nodes_repo.all_nodes(session)
        held = {node.id for node in nodes if node.images and row.id in node.images}
        return sorted(held | ({row.node_id} if row.node_id else set()))

    async def remove(self, rootfs: str, nodes: list[str]) -> None:
        """A deleted image's files, from each node that holds them (one that cannot be
        reached keeps them: logged, and they no longer count as an image anywhere)."""
        with anyio.CancelScope(shield=True):
            for node_id in nodes:
                try:
                    await (await self.fleet.node(node_id, serving=False)).remove_image(rootfs)
                except VoidRunError as exc:
                    log.warning("node %s kept the files of a deleted image %s: %s", node_id,
                                rootfs, exc)  # fmt: skip
