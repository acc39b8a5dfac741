"""A node's images, as the node daemon serves them to replicas and other nodes
(``node/images.py`` is the HTTP side): send the files of an image it holds, copy an image it
lacks from a node that holds it, remove the files of a deleted image.

Placement (``services/fleet.py``) picks nodes that hold the image; when every such node is
full (or none is in the asked region) but another node has room, the replica asks that node to
copy the image first. The copy streams the holder's files (``images/transfer.py``) into place
with an import's limits and checks, and the node notes the image in its row at once, so the
create that waited for it is placed there. Copies of one image run one at a time on a node: a
second one waits and finds the image held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import ids
from ..config import Settings
from ..drivers.remote import wire
from ..errors import ConflictError, InvalidInputError, NotFoundError, SandboxUnavailableError
from ..images.entries import CHUNK
from ..images.holdings import held_images, unlisted
from ..images.importer import receive_image, remove_image, target_dir
from ..images.locations import located
from ..images.manifest import read_manifest
from ..images.progress import ImageBuildError
from ..images.sources import ImageConfig
from ..images.transfer import ChunkReader, export_tar
from ..store.db import transaction
from ..store.repos import images as images_repo
from ..store.repos import nodes as nodes_repo
from ..store.tables import Image
from .image_requests import IMAGE_UID_BASE, import_request
from .locks import KeyedLocks

log = logging.getLogger(__name__)
READ_TIMEOUT = 60.0  # a holder silent that long mid-copy has failed
SWEEP_AFTER = 600.0  # an image dir younger than this may be an import whose row is coming


class NodeImages:
    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], node_id: str
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.node_id = node_id
        self.stop = threading.Event()  # set at shutdown: a copy under way stops and cleans up
        self._copying = KeyedLocks()

    async def _ready_row(self, image_id: str) -> Image:
        row = None
        if ids.is_id(image_id):
            async with self.sessions() as session:
                row = await session.get(Image, image_id)
        if row is None or not row.active or row.status != "ready" or not row.rootfs:
            raise NotFoundError("Image not found or not ready", image_id)
        if row.layers:
            raise InvalidInputError("Snapshot images are not copied between nodes", row.id)
        return row

    async def held(self, row: Image) -> bool:
        bootable = (row.id, row.name, row.tag, row.system, row.rootfs, list(row.layers or []))
        return bool(await held_images([bootable], self.settings.images_root))

    async def files(self, image_id: str) -> Iterator[bytes]:
        """The image's root filesystem as a tar stream (blocking: iterate it in a thread)."""
        row = await self._ready_row(image_id)
        if not await self.held(row):
            raise NotFoundError("Image not held here", image_id)
        rootfs = located(self.settings.images_root, row.rootfs)
        uid_base = await anyio.to_thread.run_sync(_uid_base, rootfs.parent)
        return export_tar(rootfs, uid_base)

    async def copy(self, image_id: str, source: str) -> int | None:
        """Copy the image from node ``source``; its size in bytes, or None: held already."""
        async with self._copying.hold(image_id):
            row = await self._ready_row(image_id)
            if await self.held(row):
                return None
            org_id = None if row.system else row.org_id
            req = import_request(self.settings, org_id, row.name, row.tag, Path(), "")
            if located(self.settings.images_root, row.rootfs) != target_dir(req) / "rootfs":
                raise ConflictError("The image's row names another directory", row.rootfs)
            async with self.sessions() as session:
                holder = await nodes_repo.get(session, source)
            if holder is None:
                raise NotFoundError("No such source node", source)
            url = f"{holder.url}{wire.PREFIX}/images/{image_id}/files"
            config = ImageConfig.from_wire(row.config or {})
            token = self.settings.node_token_value

            def work() -> int:
                with (
                    httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT)) as client,
                    client.stream("GET", url, headers={wire.TOKEN_HEADER: token}) as response,
                ):
                    if response.status_code != 200:
                        response.read()
                        raise ImageBuildError(
                            f"node {source} did not send it ({response.status_code})",
                            response.text[:500],
                        )
                    reader = ChunkReader(response.iter_raw(CHUNK))
                    receive_image(req, reader, config, cancelled=self.stop.is_set)
                    return reader.received

            try:
                received = await anyio.to_thread.run_sync(work)
            except (ImageBuildError, OSError, httpx.HTTPError) as exc:
                log.error("node %s: copying image %s from %s failed: %s", self.node_id, image_id,
                          source, exc)  # fmt: skip
                raise SandboxUnavailableError(
                    f"Copying the image from node {source} failed", str(exc)
                ) from exc
            async with transaction(self.sessions) as session:
                await nodes_repo.hold_image(session, self.node_id, image_id)
        log.info("node %s: copied image %s:%s (%s) from %s, %d bytes", self.node_id, row.name,
                 row.tag, image_id, source, received)  # fmt: skip
        return received

    async def sweep(self) -> list[Path]:
        """At the node's start: remove the files of images no row names any more (deleted
        while this node could not be reached), once they are :data:`SWEEP_AFTER` s old."""
        async with self.sessions() as session:
            listed = await images_repo.stored_paths(session)
        root = self.settings.images_root
        found = await anyio.to_thread.run_sync(unlisted, root, listed, SWEEP_AFTER)
        for rootfs in found:
            log.warning("node %s: removing %s (no image row names it)", self.node_id, rootfs)
            await anyio.to_thread.run_sync(remove_image, root, rootfs)
        return found

    async def remove(self, rootfs: str) -> None:
        """The files of an image whose row is gone (deleted through a replica)."""
        async with self.sessions() as session:
            if await images_repo.by_rootfs(session, rootfs) is not None:
                raise ConflictError("An image still uses these files", rootfs)
        path = located(self.settings.images_root, rootfs)
        try:
            await anyio.to_thread.run_sync(remove_image, self.settings.images_root, path)
        except ValueError as exc:
            raise InvalidInputError("Not an imported image", str(exc)) from None


def _uid_base(image_dir: Path) -> int:
    manifest = read_manifest(image_dir) or {}
    try:
        return int(manifest.get("uid_base", IMAGE_UID_BASE))
    except (TypeError, ValueError):
        return IMAGE_UID_BASE
