"""Files shared between imported images: a content-addressed store of hard links.

Every regular file an import writes is hashed while it is written. Its key is the content
digest plus everything that lives in the inode (mode, owner, mtime), so two images whose layers
hold the same file end up with one inode: ``<images_root>/.store/<key[:2]>/<key>`` and a hard
link in each image. Images are read-only lower layers (a sandbox's writes go to its own upper
layer by copy-up), so sharing inodes never lets one image change another.

Nothing needs a lock: a link that fails (the entry vanished under a concurrent :meth:`collect`,
the inode hit the filesystem's link limit) only means the file keeps its own copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

STORE_DIR = ".store"


class ContentStore:
    def __init__(self, images_root: Path) -> None:
        self.root = images_root / STORE_DIR
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    @staticmethod
    def hasher() -> hashlib._Hash:
        return hashlib.sha256()

    @staticmethod
    def key(digest: str, mode: int, uid: int, gid: int, mtime: float) -> str:
        return f"{digest}-{mode:o}-{uid}-{gid}-{int(mtime)}"

    def share(self, key: str, dir_fd: int, name: str) -> bool:
        """Replace ``name`` (just written) by the stored inode for ``key``, or store it.
        Returns True when ``name`` now shares an inode written by an earlier import."""
        bucket = self.root / key[:2]
        entry = bucket / key
        tmp = f".{name}.cas"
        try:
            os.link(entry, tmp, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass  # not stored yet (or just collected)
        except OSError:
            return False  # link limit, another filesystem: keep the copy
        else:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return True
        try:
            bucket.mkdir(mode=0o700, exist_ok=True)
            os.link(name, entry, src_dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            pass  # stored by a concurrent import meanwhile, or cannot link: not shared
        return False

    def collect(self) -> int:
        """Drop stored files no image links any more; returns how many. Blocking."""
        removed = 0
        for bucket in self.root.iterdir():
            for entry in bucket.iterdir():
                try:
                    if entry.lstat().st_nlink == 1:
                        entry.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            with contextlib.suppress(OSError):  # only when empty
                bucket.rmdir()
        return removed
