"""Image imports: requests checked and recorded, builds run in the app's task group.

``POST /api/images`` records a ``building`` row (or returns the one already building for the
same org, name and tag) and starts :meth:`ImageBuilds._run` in the lifespan's task group; the
unpacking itself (``images/importer.py``) runs in a worker thread, at most
``image_build_concurrency`` at a time. Progress and log lines are kept in memory per build
(:class:`BuildLog`) for ``GET /api/images/{id}`` and its SSE log stream. A build the server
did not finish (shut down, killed) ends ``error``: at shutdown when it can, otherwise at the
next start (:meth:`ImageBuilds.recover`), which also removes its partial files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import ids
from ..config import Settings
from ..errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from ..images import locations
from ..images.importer import ImportRequest, import_image, remove_image, remove_partials
from ..images.progress import BuildProgress, ImageBuildError
from ..schemas.images import ImageCreate
from ..store.db import transaction
from ..store.repos import images as repo
from ..store.repos import nodes as nodes_repo
from ..store.tables import Image
from . import images
from .accounts import Principal
from .build_log import BuildLog
from .image_requests import (
    Pull,
    allowed_path,
    check_name,
    check_tag,
    import_request,
    registry_job,
)
from .images import GIB, SYSTEM_IMAGES

if TYPE_CHECKING:
    from .placed_builds import PlacedBuilds

log = logging.getLogger(__name__)


RESTARTED = "the server restarted during the build"
PROGRESS_SECONDS = 1.0  # how often a node writes a build's progress into its row


Job = tuple[Path, str] | Pull  # a checked host path and its tag, or a registry pull


class ImageBuilds:
    """Imports on this server; with ``placed`` (an API replica) each runs on a node instead
    (``placed_builds.py``), and with ``node_id`` (a node daemon) this runs those placed here."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        spawn: Callable[[Callable[[], Awaitable[Any]]], None],
        *,
        node_id: str | None = None,
        placed: PlacedBuilds | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.spawn = spawn
        self.node_id = node_id
        self.placed = placed
        self.logs: dict[str, BuildLog] = {}
        self._stop = threading.Event()
        self._limiter = anyio.CapacityLimiter(settings.image_build_concurrency)

    # --- start ------------------------------------------------------------------------------

    async def start(self, caller: Principal, body: ImageCreate) -> Image:
        name, tag = check_name(body.name), check_tag(body.version or "latest")
        if name in SYSTEM_IMAGES:
            raise ConflictError("image name reserved", f"{name} is a system image")
        if (body.path is None) == (body.source is None):
            raise InvalidInputError("give exactly one of path and source")
        source = body.source or body.path or ""
        job: Job | None = None
        node: str | None = None
        if self.placed is not None:  # a replica: checked and run on a node
            if body.source is not None:
                registry_job(self.settings, body)  # a malformed reference is a 400 here already
            node = await self.placed.pick_node()
        else:
            job = self._job(body)
        try:
            row, created = await self._record(caller, name, tag, source, node)
        except IntegrityError:  # the same org, name and tag, inserted a moment ago
            return await self._concurrent(caller.org_id, name, tag)
        if not created:
            return row  # the same build, asked for twice
        if self.placed is not None:
            await self.placed.start(row, body, self._forget)
        else:
            assert job is not None
            self._begin(row.id, caller.org_id, name, tag, job)
        return row

    async def start_placed(self, image_id: str, data: dict[str, Any]) -> None:
        """On a node: run the import a replica recorded for this node (its checks here: the
        path is one of this node's import directories)."""
        async with self.sessions() as session:
            row = await session.get(Image, image_id) if ids.is_id(image_id) else None
        if row is None or row.org_id is None:
            raise NotFoundError("Image not found", image_id)
        if row.status != "building" or row.node_id != self.node_id:
            raise ConflictError("image is not an import placed on this node", image_id)
        body = ImageCreate.model_validate({**data, "name": row.name, "version": row.tag})
        if image_id not in self.logs:
            self._begin(row.id, row.org_id, row.name, row.tag, self._job(body))

    def _job(self, body: ImageCreate) -> Job:
        if body.source is not None:
            return registry_job(self.settings, body)
        assert body.path is not None
        return allowed_path(self.settings, body.path)

    def _begin(self, image_id: str, org_id: str, name: str, tag: str, job: Job) -> None:
        self.logs[image_id] = BuildLog()
        if isinstance(job, tuple):
            req = self._request(org_id, name, tag, *job)
            self.spawn(functools.partial(self._run, image_id, req))
        else:
            self.spawn(functools.partial(self._run_registry, image_id, org_id, name, tag, job))

    async def _forget(self, image_id: str) -> None:
        with anyio.CancelScope(shield=True):
            await images.forget(self.sessions, image_id)

    async def _record(
        self, caller: Principal, name: str, tag: str, source: str, node: str | None
    ) -> tuple[Image, bool]:
        async with transaction(self.sessions) as session:
            existing = await repo.own(session, caller.org_id, name, tag)
            if existing is not None:
                if existing.status == "building":
                    return existing, False
                if existing.status == "ready":
                    raise ConflictError("image already exists", f"{name}:{tag}")
                await session.delete(existing)  # a failed build: try again
                await session.flush()
            row = Image(
                id=ids.new_id(),
                name=name,
                tag=tag,
                org_id=caller.org_id,
                created_by=caller.user_id,
                system=False,
                active=False,
                status="building",
                progress=0,
                source=source[:1024],
                description=f"imported from {source}"[:500],
                node_id=node,
            )
            session.add(row)
        return row, True

    async def _concurrent(self, org_id: str, name: str, tag: str) -> Image:
        async with self.sessions() as session:
            row = await repo.own(session, org_id, name, tag)
        if row is None or row.status != "building":
            raise ConflictError("image already exists", f"{name}:{tag}")
        return row

    def _request(
        self, org_id: str, name: str, tag: str, path: Path, source_tag: str
    ) -> ImportRequest:
        return import_request(self.settings, org_id, name, tag, path, source_tag)

    # --- registry: the one place that depends on images/registry.py --------------------------

    async def _run_registry(
        self,
        image_id: str,
        org_id: str,
        name: str,
        tag: str,
        pull: Pull,
    ) -> None:
        build = self.logs[image_id]
        pulls = self.settings.images_root / "orgs" / org_id / ".pulls"
        dest = pulls / image_id

        def line(text: str) -> None:
            anyio.from_thread.run_sync(build.add, f"[pull] {text}")

        def work() -> Path:
            pulls.mkdir(mode=0o700, parents=True, exist_ok=True)
            return pull(dest, line)

        try:
            layout = await anyio.to_thread.run_sync(work, limiter=self._limiter)
        except Exception as exc:  # noqa: BLE001 - the registry's message is the build's error
            await anyio.to_thread.run_sync(_remove_quietly, dest)
            await self._finish(image_id, None, error=f"pull failed: {exc}")
            return
        req = self._request(org_id, name, tag, layout, "")
        try:
            await self._run(image_id, req)
        finally:
            await anyio.to_thread.run_sync(_remove_quietly, dest)

    # --- the build ----------------------------------------------------------------------------

    async def _run(self, image_id: str, req: ImportRequest) -> None:
        build = self.logs[image_id]

        def progress(update: BuildProgress) -> None:
            anyio.from_thread.run_sync(build.report, update)

        work = functools.partial(import_image, req, progress=progress, cancelled=self._stop.is_set)
        if self.node_id is not None:  # replicas read the progress from the row
            self.spawn(functools.partial(self._keep_progress, image_id, build))
        try:
            imported = await anyio.to_thread.run_sync(
                work, limiter=self._limiter, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._finish(image_id, None, error="the server shut down during the build")
            raise
        except (ImageBuildError, OSError, ValueError) as exc:
            await self._finish(image_id, None, error=str(exc))
            return
        except Exception as exc:
            log.exception("image import %s failed", image_id)
            await self._finish(image_id, None, error=f"internal error: {type(exc).__name__}")
            return
        if imported.stats.stripped_setuid:
            stripped = ", ".join(imported.stats.stripped_setuid[:20])
            build.add(f"[unpack] setuid/setgid bits stripped from: {stripped}")
        build.add(
            f"[done] {imported.stats.entries} entries, {imported.built.size_bytes} bytes, "
            f"{imported.stats.deduplicated} files shared with other images"
        )
        await self._finish(image_id, imported, error=None)

    async def _keep_progress(self, image_id: str, build: BuildLog) -> None:
        """Write the build's progress into its row while it builds (until ``_finish``)."""
        written = -1
        while build.status == "building":
            await anyio.sleep(PROGRESS_SECONDS)
            if build.status == "building" and build.progress != written:
                written = build.progress
                async with transaction(self.sessions) as session:
                    await repo.set_progress(session, image_id, written)

    async def log_since(
        self, image_id: str, position: int, wait: float
    ) -> tuple[list[str], int, str, str | None]:
        """On a node: the build's lines after ``position``, waiting up to ``wait`` s for one
        while it builds, with its status and error (for the replica that streams the log)."""
        build = self.logs.get(image_id)
        if build is None:
            async with self.sessions() as session:
                row = await session.get(Image, image_id) if ids.is_id(image_id) else None
            if row is None:
                raise NotFoundError("Image not found", image_id)
            if row.status == "building":
                return [], position, "error", "the build's log is not on this node"
            return [], position, row.status, row.error
        if position >= build.total and build.status == "building" and wait > 0:
            with anyio.move_on_after(wait):
                await build.changed.wait()
        lines, position = build.since(position)
        return lines, position, build.status, build.error

    async def _finish(self, image_id: str, imported: Any, *, error: str | None) -> None:
        build = self.logs.get(image_id)
        async with transaction(self.sessions) as session:
            row = await session.get(Image, image_id)
            if row is not None and imported is not None:
                row.status, row.active, row.progress, row.error = "ready", True, 100, None
                row.rootfs = locations.stored(self.settings.images_root, imported.built.rootfs)
                row.size_gb = max(1, -(-imported.built.size_bytes // GIB))
                row.config = imported.config.to_wire()
                if self.node_id is not None:  # placed on this node: held here from now on
                    await nodes_repo.hold_image(session, self.node_id, image_id)
            elif row is not None:
                row.status, row.active, row.error = "error", False, (error or "")[:2000]
        if build is not None:
            if error:
                build.add(f"[error] {error}")
            build.finish("ready" if imported is not None else "error", error)
        log.info("image import %s: %s", image_id, error or "ready")

    # --- after a restart, at shutdown ---------------------------------------------------------

    async def recover(self) -> None:
        """Builds this server did not finish: ``error``, and their partial files removed."""
        if self.placed is not None:
            return  # a replica runs no builds: each node fails its own when it restarts
        async with transaction(self.sessions) as session:
            rows = [row for row in await repo.building(session) if row.node_id == self.node_id]
            for row in rows:
                row.status, row.active, row.error = "error", False, RESTARTED
        for row in rows:
            if row.org_id is None:
                continue
            root = self.settings.images_root
            await anyio.to_thread.run_sync(remove_partials, root, row.org_id, row.name, row.tag)
            await anyio.to_thread.run_sync(_remove_quietly, root / "orgs" / row.org_id / ".pulls")
            log.warning("image %s:%s (%s): %s", row.name, row.tag, row.id, RESTARTED)

    def shutdown(self) -> None:
        """Running unpackers stop at their next entry and remove their partial files."""
        self._stop.set()

    # --- delete -------------------------------------------------------------------------------

    async def delete(self, caller: Principal, image_id: str) -> None:
        async with transaction(self.sessions) as session:
            row = (
                await repo.by_id(session, caller.org_id, image_id) if ids.is_id(image_id) else None
            )
            if row is None:
                raise NotFoundError("Image not found")
            if row.system or row.org_id is None:
                raise PermissionDeniedError("system images cannot be deleted")
            if row.status == "building":
                raise ConflictError("image is building", "wait until it is ready or failed")
            used = await repo.sandboxes_using(session, row.id)
            if used:
                raise ConflictError("image in use", f"{used} sandbox(es) use it; delete them first")
            layered = await repo.snapshots_over(session, row.id)
            if layered:
                raise ConflictError(
                    "image in use", f"{layered} snapshot(s) are layered on it; delete them first"
                )
            rootfs = row.rootfs
            holders = await self.placed.holders(session, row) if self.placed is not None else []
            await session.delete(row)
        self.logs.pop(image_id, None)
        if rootfs and self.placed is not None:
            await self.placed.remove(rootfs, holders)
        elif rootfs:
            root = self.settings.images_root
            await anyio.to_thread.run_sync(remove_image, root, locations.located(root, rootfs))


def _remove_quietly(path: Path) -> None:
    """``path`` (a pull's layout, or all of an org's ``.pulls``), then ``.pulls`` and the
    org's directory if that left them empty."""
    shutil.rmtree(path, ignore_errors=True)
    pulls = path if path.name == ".pulls" else path.parent
    for empty in (pulls, pulls.parent):
        with contextlib.suppress(OSError):
            empty.rmdir()
