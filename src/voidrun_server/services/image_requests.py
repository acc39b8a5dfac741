"""What an image import asks for, checked: its name and tag, a host path under the import
directories, or a registry pull (the one place that depends on ``images/registry.py``); and
what the importer needs for it. Used by the API's imports, the CLI, snapshots and nodes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from ..errors import InvalidInputError, PermissionDeniedError
from ..images import registry
from ..images.importer import ImportRequest
from ..images.reference import InvalidReferenceError, parse_reference
from ..images.sources import split_tag
from ..images.unpack import Limits
from ..schemas.images import ImageCreate

PULL_TIMEOUT_SECONDS = 3600.0  # a registry pull that takes longer fails the build
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,49}$")
IMAGE_UID_BASE = 100000  # what images are shifted to (images/build.py's default)
Pull = Callable[[Path, Callable[[str], None]], Path]


def import_request(
    settings: Settings, org_id: str | None, name: str, tag: str, path: Path, source_tag: str
) -> ImportRequest:
    """What the importer needs for one image, with this server's limits (API and CLI)."""
    return ImportRequest(
        images_root=settings.images_root,
        org_id=org_id,
        name=name,
        tag=tag,
        path=path,
        source_tag=source_tag,
        limits=Limits(settings.image_max_bytes, settings.image_max_layers, settings.image_setuid),
        uid_base=IMAGE_UID_BASE,
    )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInputError(
            "invalid image name",
            "1-100 of a-z, 0-9, '.', '_', '-'; starting with a letter or digit",
        )
    return name


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise InvalidInputError("invalid version", "1-50 of A-Z, a-z, 0-9, '.', '_', '-'")
    return tag


def allowed_path(settings: Settings, raw: str) -> tuple[Path, str]:
    """An import's host path (``dir`` or ``dir:tag``), resolved and checked against the
    import directories: 403 outside them."""
    if not raw or len(raw) > 4096 or "\x00" in raw or not raw.startswith("/"):
        raise InvalidInputError("invalid path", "an absolute host path")
    path, source_tag = split_tag(raw)
    resolved = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(d)) for d in settings.image_import_dirs]
    if not any(resolved.is_relative_to(root) and resolved != root for root in roots):
        raise PermissionDeniedError(
            "path not allowed",
            "imports are read only from the directories in VOIDRUN_IMAGE_IMPORT_DIRS",
        )
    if not resolved.exists():
        raise InvalidInputError("import path not found", raw)
    return resolved, source_tag


def registry_job(settings: Settings, body: ImageCreate) -> Pull:
    """A function that pulls ``body.source`` into an OCI layout under a directory and
    returns the layout (``images/registry.py``); a malformed reference is a 400 now."""
    try:
        parse_reference(body.source or "")
    except InvalidReferenceError as exc:
        raise InvalidInputError("invalid image reference", str(exc)) from None
    creds = None
    if body.credentials is not None:  # used for this pull only; never stored
        creds = (body.credentials.username, body.credentials.password.get_secret_value())
    reference, insecure = body.source or "", body.insecure
    allowed = list(settings.image_insecure_registries)
    max_bytes = settings.image_max_bytes

    def pull(dest: Path, progress: Callable[[str], None]) -> Path:
        result: Path = registry.pull_to_layout(
            reference,
            dest,
            credentials=creds,
            insecure=insecure,
            allowed_insecure=allowed,
            progress=lambda _fraction, line: progress(line),
            timeout=PULL_TIMEOUT_SECONDS,
            max_bytes=max_bytes,
        )
        return result

    return pull
