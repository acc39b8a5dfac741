"""Where an image's files are, as the database says it and as this server finds them.

Image rows (``images.rootfs``, ``images.layers``) hold paths relative to the images directory
(``orgs/<org>/<name>/<tag>/rootfs``, ``code/1.0.0/rootfs``): every server, node and replica
finds them under its own ``VOIDRUN_IMAGES_DIR``, wherever that is. Rows written before paths
were relative hold absolute ones; they are used as they are until :func:`stored` rewrites
them (each server does at start for the paths under its own images directory).
"""

from __future__ import annotations

from pathlib import Path


def stored(images_root: Path, path: Path | str) -> str:
    """``path`` as a row holds it: relative to ``images_root`` when it lies under it."""
    absolute = Path(path)
    if absolute.is_absolute() and absolute.is_relative_to(images_root):
        return str(absolute.relative_to(images_root))
    return str(path)


def located(images_root: Path, value: str) -> Path:
    """A row's path as this server finds it (an absolute one, from older rows, as it is)."""
    path = Path(value)
    if path.is_absolute():
        return path
    if ".." in path.parts:
        raise ValueError(f"an image path may not leave the images directory: {value}")
    return images_root / path


def located_all(images_root: Path, values: list[str] | None) -> tuple[Path, ...]:
    return tuple(located(images_root, value) for value in values or ())
