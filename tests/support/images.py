"""The ``code`` image for tests: built once per machine, shared by every test tier."""

from __future__ import annotations

import os
from pathlib import Path

from voidrun_server.images.build import build_code_image
from voidrun_server.services.images import SYSTEM_IMAGES

IMAGES_DIR = Path(os.environ.get("VOIDRUN_TEST_IMAGES_DIR", "/var/tmp/voidrun-test-images"))
CODE_TAG = SYSTEM_IMAGES["code"]


def ensure_code_image() -> Path:
    return build_code_image(IMAGES_DIR, tag=CODE_TAG).rootfs
