"""Snapshots and forks: a sandbox's current root as a new org image, and N sandboxes from it.

A snapshot image is one layer over the image its sandbox runs on (``images/snapshot.py``):
the driver copies the sandbox's writable layer at one point in time (``Exportable``; a running
sandbox is frozen for the copy and thawed after it, whatever happens), and sandboxes made from
the image stack that layer over the image's own layers, each with its own copy-on-write disk.

* ``snapshot``: under the sandbox's lock (no verb runs meanwhile), the image row is recorded
  ``building``, the layer copied and published, and the row ends ``ready`` (source
  ``snapshot of <id>``). A failure removes the row and the partial files: the caller gets the
  error, and nothing is left behind.
* ``fork``: the org's quota is checked for all N sandboxes first (403, nothing made), then a
  snapshot is taken and N sandboxes are created from it in parallel with the source's cpu,
  memory, environment, labels, ports and egress policy. It is all or nothing: if any create
  fails, the ones that were made are deleted, and so is the snapshot, and the error says how
  many failed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import anyio.to_thread
from sqlalchemy.exc import IntegrityError

from .. import ids
from ..drivers.base import DriverError, Exportable, LayerExport, SandboxStateError
from ..errors import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    VoidRunError,
)
from ..images import locations
from ..images import snapshot as layout
from ..images.importer import remove_image
from ..schemas.sandboxes import NetworkSpec, PortSpec, SandboxCreate
from ..store.db import transaction
from ..store.repos import images as image_repo
from ..store.repos import sandboxes as sandbox_repo
from ..store.tables import Image, Sandbox
from . import images
from .accounts import Principal
from .image_requests import IMAGE_UID_BASE, check_name, check_tag
from .images import GIB, SYSTEM_IMAGES
from .lifecycle import Status
from .provisioning import describe
from .quotas import Usage
from .sandboxes import SandboxService

log = logging.getLogger(__name__)

MAX_FORKS = 20
MAX_LAYERS = 16  # layers of one image, its base included: each is a mount per sandbox
FORK_CONCURRENCY = 4
SNAPSHOT_STATES = (Status.RUNNING, Status.PAUSED, Status.STOPPED)


class Snapshots:
    def __init__(self, service: SandboxService) -> None:
        self.service = service
        self.settings = service.settings

    async def snapshot(
        self, caller: Principal, sandbox_id: str, name: str | None, tag: str | None
    ) -> Image:
        await self.service.get(caller, sandbox_id)  # unknown ids: 404 whatever the body
        if name is None:
            raise InvalidInputError("name is required", "the new image's name")
        name, tag = check_name(name), check_tag(tag or "latest")
        if name in SYSTEM_IMAGES:
            raise ConflictError("image name reserved", f"{name} is a system image")
        return await self._snapshot(caller, sandbox_id, name, tag)

    async def fork(
        self, caller: Principal, sandbox_id: str, count: int | None
    ) -> tuple[Image, list[Sandbox]]:
        source = await self.service.get(caller, sandbox_id)
        if count is None or not 1 <= count <= MAX_FORKS:
            raise InvalidInputError(f"invalid count: must be between 1 and {MAX_FORKS}")
        disk_mb = self.settings.sandbox_disk_mb
        wanted = Usage(
            sandboxes=count, cpu=count * source.cpu, mem_mb=count * source.mem,
            disk_mb=count * disk_mb,
        )  # fmt: skip
        async with transaction(self.service.sessions) as session:
            await self.service.check_quota(session, caller.org_id, wanted)
        image = await self._snapshot(caller, sandbox_id, f"fork-{sandbox_id}", ids.new_id())
        made: list[Sandbox] = []
        failed: list[VoidRunError] = []
        limiter = anyio.CapacityLimiter(FORK_CONCURRENCY)

        async def create(body: SandboxCreate) -> None:
            async with limiter:
                try:
                    made.append(await self.service.create(caller, body))
                except VoidRunError as exc:
                    failed.append(exc)

        try:
            async with anyio.create_task_group() as tasks:
                for i in range(count):
                    tasks.start_soon(create, _fork_body(source, image, i + 1))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo_fork(caller, made, image)
            raise
        if failed:
            with anyio.CancelScope(shield=True):
                await self._undo_fork(caller, made, image)
            first = failed[0]
            raise type(first)(
                f"Fork failed: {len(failed)} of {count} sandboxes could not be created, "
                "none was kept",
                describe(first),
            )
        made.sort(key=lambda row: row.name)
        async with transaction(self.service.sessions) as session:
            sandbox_repo.record(
                session, "sandbox.fork", caller.org_id, sandbox_id,
                image=image.id, forks=[row.id for row in made],
            )  # fmt: skip
        return image, made

    # --- the snapshot -------------------------------------------------------------------------

    async def _snapshot(self, caller: Principal, sandbox_id: str, name: str, tag: str) -> Image:
        driver = self.service.driver
        await self.service.get(caller, sandbox_id)  # unknown ids: 404 before waiting
        if self.service.fleet is not None:
            raise InvalidInputError(
                "snapshots are not supported yet for sandboxes on a node",
                "this server runs with VOIDRUN_ROLE=api (docs/scale-out.md)",
            )
        if not driver.supports(sandbox_id, Exportable):
            raise InvalidInputError(
                "snapshots are not supported by this sandbox's isolation",
                driver.isolation_of(sandbox_id),
            )
        async with self.service.lock(sandbox_id):
            row = await self.service.get(caller, sandbox_id)
            if row.status not in SNAPSHOT_STATES:
                raise InvalidStateError(
                    f"cannot snapshot a sandbox that is {row.status}",
                    "only running, paused or stopped sandboxes",
                )
            image, base = await self._record(caller, row, name, tag)
            target = layout.SnapshotTarget(self.settings.images_root, caller.org_id, name, tag)
            partial: Path | None = None
            try:
                partial = await anyio.to_thread.run_sync(layout.begin, target)
                exported = await self._export(driver, row, partial / "rootfs")
                if exported.stripped_setuid and self.settings.image_setuid == "reject":
                    raise InvalidInputError(
                        "setuid files in the sandbox (VOIDRUN_IMAGE_SETUID=reject)",
                        ", ".join(exported.stripped_setuid[:20]),
                    )
                manifest = {
                    "uid_base": IMAGE_UID_BASE,
                    "snapshot_of": row.id,
                    "parent": f"{base.name}:{base.tag}",
                    "layers": [base.rootfs, *(base.layers or [])],
                    "config": base.config,
                    "entries": exported.entries,
                    "whiteouts": exported.whiteouts,
                    "copied_bytes": exported.bytes,
                    "frozen_ms": round(exported.frozen_seconds * 1000, 1),
                    "stripped_setuid": list(exported.stripped_setuid[:100]),
                }
                built = await anyio.to_thread.run_sync(layout.publish, target, partial, manifest)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(layout.abandon, target, partial)
                    await self._forget(image.id)
                if isinstance(exc, SandboxStateError):
                    raise InvalidStateError("Snapshot failed", describe(exc)) from exc
                if isinstance(exc, DriverError):
                    raise VoidRunError("Snapshot failed", describe(exc)) from exc
                raise
            async with transaction(self.service.sessions) as session:
                stored = await session.get(Image, image.id)
                assert stored is not None
                stored.status, stored.active, stored.progress = "ready", True, 100
                stored.rootfs = locations.stored(self.settings.images_root, built.rootfs)
                stored.size_gb = max(1, -(-built.size_bytes // GIB))
                sandbox_repo.record(
                    session, "image.snapshot", caller.org_id, row.id, image=image.id,
                    name=f"{name}:{tag}", bytes=exported.bytes,
                    frozen_ms=round(exported.frozen_seconds * 1000, 1),
                )  # fmt: skip
            log.info(
                "snapshot of %s -> %s:%s: %d entries, %d bytes, frozen %.0f ms",
                row.id, name, tag, exported.entries, exported.bytes,
                exported.frozen_seconds * 1000,
            )  # fmt: skip
            return stored

    async def _export(self, driver: Exportable, row: Sandbox, dest: Path) -> LayerExport:
        """The driver's copy; a running sandbox's agent connection is told about the freeze."""
        frozen = row.status == Status.RUNNING
        if frozen:
            self.service.agents.freeze(row.id, True)
        try:
            return await driver.export_layer(row.id, dest, uid_base=IMAGE_UID_BASE)
        finally:
            if frozen:
                self.service.agents.freeze(row.id, False)

    async def _record(
        self, caller: Principal, row: Sandbox, name: str, tag: str
    ) -> tuple[Image, Image]:
        """The new image's row (``building``) and the image the sandbox runs on."""
        try:
            async with transaction(self.service.sessions) as session:
                base = await session.get(Image, row.image_id) if row.image_id else None
                if base is None or not base.rootfs:
                    raise InvalidStateError("the sandbox's image is gone", row.image)
                if len(base.layers or []) + 2 > MAX_LAYERS:
                    raise ConflictError(
                        "too many layers",
                        f"{row.image} already has {len(base.layers or []) + 1} layers; at most "
                        f"{MAX_LAYERS} per image (snapshot a sandbox of a shallower image)",
                    )
                existing = await image_repo.own(session, caller.org_id, name, tag)
                if existing is not None and existing.status != "error":
                    raise ConflictError("image already exists", f"{name}:{tag}")
                if existing is not None:
                    await session.delete(existing)
                    await session.flush()
                image = Image(
                    id=ids.new_id(), name=name, tag=tag, org_id=caller.org_id,
                    created_by=caller.user_id, system=False, active=False,
                    status="building", progress=0, source=f"snapshot of {row.id}",
                    description=f"snapshot of sandbox {row.name} ({row.id}) over {row.image}",
                    parent_id=base.id, layers=[base.rootfs, *(base.layers or [])],
                    config=base.config,
                )  # fmt: skip
                session.add(image)
        except IntegrityError:
            raise ConflictError("image already exists", f"{name}:{tag}") from None
        return image, base

    async def _forget(self, image_id: str) -> None:
        await images.forget(self.service.sessions, image_id)

    # --- undoing a fork -----------------------------------------------------------------------

    async def _undo_fork(self, caller: Principal, made: list[Sandbox], image: Image) -> None:
        for row in made:
            try:
                await self.service.delete(caller, row.id)
            except VoidRunError as exc:
                log.error("fork: could not delete %s after a failed fork: %s", row.id, exc)
        async with transaction(self.service.sessions) as session:
            stored = await session.get(Image, image.id)
            if stored is None or await image_repo.sandboxes_using(session, image.id):
                log.error("fork: snapshot %s kept: sandboxes still use it", image.id)
                return
            rootfs = stored.rootfs
            await session.delete(stored)
        root = self.settings.images_root
        await anyio.to_thread.run_sync(remove_image, root, locations.located(root, rootfs))


def _fork_body(source: Sandbox, image: Image, number: int) -> SandboxCreate:
    suffix = f"-fork-{number}"
    name = source.name[: 253 - len(suffix)].rstrip("-.") + suffix
    return SandboxCreate(
        name=name,
        image=f"{image.name}:{image.tag}",
        cpu=source.cpu,
        mem=source.mem,
        env_vars=dict(source.env_vars or {}),
        auto_sleep=source.auto_sleep,
        labels=dict(source.labels or {}),
        ports=[PortSpec.model_validate(p) for p in source.ports or []] or None,
        network=NetworkSpec.model_validate(source.network) if source.network else None,
    )
