"""Another process holds the SQLite write lock for a while: requests wait, nothing is lost."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir=tmp_path_factory.mktemp("busy")).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_writes_wait_for_a_locked_database(server: ServerProcess) -> None:
    locked = threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(server.data_dir / "voidrun.db", isolation_level=None, timeout=30)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(2)  # longer than a request normally takes, shorter than the busy timeout
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(10)
    with server.client() as client:
        created = client.post("/orgs/apikeys", json={"keyName": "while-locked"})
        holder.join()
        assert created.status_code == 200, created.text
        key_id = created.json()["keyId"]
        assert key_id in {k["id"] for k in client.get("/orgs/apikeys").json()}
