"""``voidrun-server images import``: an image from a host path, with a progress bar.

The same import as ``POST /api/images`` (``images/importer.py``), run in this process: for an
org (``--org``), or as a system image every org sees (without it). Kept out of ``main.py``;
importing this module registers the command on the ``images`` group.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from .. import ids
from ..errors import ConflictError
from ..images import locations
from ..images.importer import import_image
from ..images.progress import ImageBuildError
from ..images.sources import split_tag
from ..services import accounts
from ..services.image_requests import check_name, check_tag, import_request
from ..services.images import GIB, SYSTEM_IMAGES
from ..store.repos import images as repo
from ..store.tables import Image
from .main import _settings, _with_session, console, err, images_app
from .progress import build_progress


@images_app.command("import")
def images_import(
    source: Annotated[
        str,
        typer.Argument(help="OCI layout dir (or dir:tag), OCI/docker-save tarball, rootfs dir."),
    ],
    name: Annotated[str, typer.Option("--name", help="Image name.")],
    version: Annotated[str, typer.Option("--version", help="Image tag.")] = "latest",
    org: Annotated[
        str | None, typer.Option("--org", help="Org name; without it, a system image.")
    ] = None,
) -> None:
    """Import an image from a host path (no import-directory restriction: you are the operator)."""

    settings = _settings()
    try:
        name, version = check_name(name), check_tag(version)
    except Exception as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if name in SYSTEM_IMAGES:
        err.print(f"[red]{name!r} is the name of a built-in image.[/red]")
        raise typer.Exit(2)
    raw, source_tag = split_tag(source)
    path = Path(os.path.realpath(raw))
    if not path.exists():
        err.print(f"[red]No such file or directory:[/red] {raw}")
        raise typer.Exit(2)

    async def find_org(session: AsyncSession) -> str | None:
        org_id = (await accounts.org_named(session, org)).id if org else None
        if await _existing(session, org_id, name, version) is not None:
            raise ConflictError("image already exists", f"{name}:{version}")
        return org_id

    org_id = _with_session(find_org)
    request = import_request(settings, org_id, name, version, path, source_tag)
    with build_progress(err, 10) as report:
        try:
            imported = import_image(request, progress=report)
        except (ImageBuildError, OSError) as exc:
            err.print(f"[red]Import failed:[/red] {exc}")
            raise typer.Exit(1) from exc

    async def record(session: AsyncSession) -> str:
        row = Image(
            id=ids.new_id(),
            name=name,
            tag=version,
            org_id=org_id,
            system=org_id is None,
            active=True,
            status="ready",
            progress=100,
            source=source[:1024],
            description=f"imported from {source}"[:500],
            rootfs=locations.stored(settings.images_root, imported.built.rootfs),
            size_gb=max(1, math.ceil(imported.built.size_bytes / GIB)),
            config=imported.config.to_wire(),
        )
        old = await _existing(session, org_id, name, version)
        if old is not None and old.status != "ready":
            await session.delete(old)  # a failed API build of the same name
            await session.flush()
        session.add(row)
        return row.id

    image_id = _with_session(record)
    stripped = imported.stats.stripped_setuid
    if stripped:
        err.print(f"setuid/setgid bits stripped from {len(stripped)} file(s)")
    console.print(
        f"Image [bold]{name}:{version}[/bold] ({image_id}) ready: "
        f"{imported.stats.entries} entries, {imported.built.size_bytes / 2**20:.1f} MiB, "
        f"{imported.stats.deduplicated} files shared with other images"
    )


async def _existing(session: AsyncSession, org_id: str | None, name: str, tag: str) -> Image | None:
    if org_id is not None:
        return await repo.own(session, org_id, name, tag)
    rows = await repo.system_images(session)
    return next((r for r in rows if r.name == name and r.tag == tag), None)
