"""A running server's data dir shows other local users nothing: secrets 0600, dirs 0711."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.support.server import ServerProcess


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_server_files_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)  # as an operator might have made it
    server = ServerProcess(data_dir=data_dir).start()
    try:
        with server.client() as client:
            assert client.get("/users/me").status_code == 200  # the database was written
        assert mode(data_dir) == 0o711
        assert mode(data_dir / "sandboxes") == 0o711
        for name in ("voidrun.db", "voidrun.db-wal", "voidrun.db-shm"):
            if (data_dir / name).exists():
                assert mode(data_dir / name) == 0o600, name
        assert "readable by others" in server.log_path.read_text()  # said so, loudly
    finally:
        server.stop()
