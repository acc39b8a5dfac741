"""A real server with the namespace driver, for tests that need real sandboxes."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.hostleaks import new_state_dir
from tests.support.images import IMAGES_DIR, ensure_code_image
from tests.support.server import ServerProcess
from tests.support.tiers import skip_if_opted_out, skip_tier


@contextmanager
def sandbox_server(**extra_env: str) -> Iterator[ServerProcess]:
    """Start a server whose sandboxes are real; after it, delete the org images it imported
    (they live in the shared images dir), stop it (or find it killed), purge every sandbox of
    every org from the host, and delete the data dir."""
    skip_if_opted_out("sandbox")
    if os.geteuid() != 0:
        skip_tier("sandbox", "sandboxes need root")
    ensure_code_image()
    data_dir = new_state_dir("voidrun-api-")
    env = {
        "VOIDRUN_IMAGES_DIR": str(IMAGES_DIR),
        "VOIDRUN_SANDBOX_DISK_MB": "256",
        **extra_env,
    }
    proc = ServerProcess(data_dir=data_dir, extra_env=env)
    try:
        proc.start()  # inside: a server that failed to start may have left state too
        yield proc
    finally:
        try:
            delete_org_images(proc)
        finally:
            proc.stop_and_purge()
            shutil.rmtree(data_dir, ignore_errors=True)


def wait_for_isolation(proc: ServerProcess, name: str, seconds: float = 120.0) -> None:
    """Until ``GET /api/health`` says isolation ``name`` is available (isolations other than
    the default start in the background); fails with its reason if it cannot run."""
    deadline = time.monotonic() + seconds
    with proc.client() as client:
        while True:
            state = client.get("/health").json()["isolations"][name]
            if state["available"]:
                return
            assert state.get("reason") == "starting", f"isolation {name}: {state}"
            assert time.monotonic() < deadline, f"isolation {name} still starting"
            time.sleep(0.1)


def delete_org_images(proc: ServerProcess) -> None:
    """Imported and snapshot images of a running server, sandboxes first (an image in use
    cannot be deleted). The bootstrap org's only: other orgs' images die with their tests."""
    if proc.process is None or proc.process.poll() is not None:
        return
    with proc.client() as client:
        for box in client.get("/sandboxes", params={"limit": 100}).json()["data"]:
            client.delete(f"/sandboxes/{box['id']}")
        for image in client.get("/images").json():
            if not image["system"]:
                client.delete(f"/images/{image['id']}")


def backend_env(backend: str) -> dict[str, str]:
    """Server environment for a database backend: SQLite is the server's default (in the data
    dir); PostgreSQL gets a fresh database (skips when ``VOIDRUN_TEST_POSTGRES_URL`` is unset)."""
    from tests.conftest import database_url

    if backend == "sqlite":
        return {}
    return {"VOIDRUN_DATABASE_URL": database_url(backend, Path())}


@pytest.fixture(scope="module", name="server")
def shared_sandbox_server() -> Iterator[ServerProcess]:
    """One real server with real sandboxes per test module: import it into a module and
    its tests get it as ``server``."""
    with sandbox_server() as proc:
        yield proc


@pytest.fixture(name="workdir")
def sandbox_workdir() -> str:
    """The sandbox's home and default working directory, where a test's files go: /root in a
    real sandbox (``tests/inprocess`` gives the host directory its host-driver agent uses)."""
    return "/root"


def create_sandbox(client: httpx.Client, **body: object) -> dict[str, object]:
    """POST /sandboxes and return the Sandbox object (asserts 201)."""
    response = client.post("/sandboxes", json={"name": "box", **body})
    assert response.status_code == 201, response.text
    data: dict[str, object] = response.json()["data"]
    return data
