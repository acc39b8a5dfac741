"""Sandbox images: read-only root filesystems that sandboxes overlay."""

from voidrun_server.images.build import (
    BuildProgress,
    BuiltImage,
    ImageBuildError,
    build_code_image,
    find_built_image,
    image_dir,
)
from voidrun_server.images.shift import OwnershipShiftError, shift_ownership

__all__ = [
    "BuildProgress",
    "BuiltImage",
    "ImageBuildError",
    "OwnershipShiftError",
    "build_code_image",
    "find_built_image",
    "image_dir",
    "shift_ownership",
]
