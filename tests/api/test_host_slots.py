"""Several servers on one host (docs/scale-out.md): each with its own uid area, subnet and
cgroup name, both run sandboxes; a server whose settings overlap a live one's refuses to
start naming both settings and the other owner; the claim of a dead server does not count.

Real servers and sandboxes (the sandbox tier); the claims are the host's own
(/run/voidrun/claims), as concurrent test servers use them (tests/support/server.py).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import hostleaks
from tests.support.hostleaks import new_state_dir
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import BIN, TEST_UID_RANGES, ServerProcess, free_uid_base
from voidrun_server.hostclaims import RANGE_SIZE

pytestmark = pytest.mark.sandbox

CLAIMS = Path("/run/voidrun/claims")
QUIET = {"VOIDRUN_WARM_POOL_SIZE": "0"}


@pytest.fixture(scope="module")
def first() -> Iterator[ServerProcess]:
    with sandbox_server(**QUIET) as proc:
        yield proc


def host_uid_and_cgroups(sandbox_id: str) -> tuple[int, set[str]]:
    """(host uid, cgroup paths in every hierarchy, v1 or v2) of a process of the sandbox,
    found through /proc."""
    for status in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            text = status.read_text()
            uid = int((status.parent / "status").read_text().split("Uid:")[1].split()[0])
        except (OSError, IndexError):
            continue
        paths = {line.split(":", 2)[2] for line in text.splitlines() if line.count(":") >= 2}
        if any(path.endswith(f"/{sandbox_id}") for path in paths):
            return uid, {path for path in paths if path != "/"}
    raise AssertionError(f"no process of {sandbox_id} found")


def test_two_servers_with_disjoint_settings_both_run_sandboxes(first: ServerProcess) -> None:
    with sandbox_server(**QUIET) as second:
        assert second.uid_base != first.uid_base and second.cgroup_parent != first.cgroup_parent
        for proc in (first, second):
            with proc.client() as client:
                box = create_sandbox(client)
                out = client.post(
                    f"/sandboxes/{box['id']}/exec", json={"command": "echo hi from $(id -u)"}
                )
                assert out.status_code == 200, out.text
                assert out.json()["data"]["stdout"].strip() == "hi from 0"
                uid, cgroups = host_uid_and_cgroups(str(box["id"]))
                # each server's sandboxes live in its own uid area and cgroup
                assert proc.uid_base <= uid < proc.uid_base + TEST_UID_RANGES * RANGE_SIZE
                assert cgroups == {f"/{proc.cgroup_parent}/{box['id']}"}
                client.delete(f"/sandboxes/{box['id']}")


def refused(env: dict[str, str]) -> str:
    """Start a server on a fresh data dir with ``env``; it must exit at once (1): its stderr."""
    data_dir = new_state_dir("voidrun-refused-")
    proc = ServerProcess(data_dir=data_dir, extra_env={**QUIET, **env})
    # watched and purged like any server's, should it run after all (and be killed at timeout)
    hostleaks.track(proc.state_dir, proc.sandbox_subnet, proc.cgroup_parent)
    try:
        result = subprocess.run(
            [str(BIN), "serve"], env=proc.env(), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stdout + result.stderr
        return " ".join(result.stderr.split())
    finally:
        hostleaks.purge_state_dir(proc.state_dir, proc.cgroup_parent)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("what", ["uid", "subnet", "cgroup"])
def test_an_overlapping_server_refuses_to_start(first: ServerProcess, what: str) -> None:
    env = {
        "uid": {"VOIDRUN_SANDBOX_UID_BASE": str(first.uid_base + 7 * RANGE_SIZE)},
        "subnet": {"VOIDRUN_SANDBOX_SUBNET": first.sandbox_subnet},
        "cgroup": {"VOIDRUN_CGROUP_PARENT": first.cgroup_parent},
    }[what]
    message = refused(env)
    assert "another server on this host already uses" in message, message
    setting = {
        "uid": "VOIDRUN_SANDBOX_UID_BASE / VOIDRUN_SANDBOX_UID_RANGES",
        "subnet": "VOIDRUN_SANDBOX_SUBNET",
        "cgroup": "VOIDRUN_CGROUP_PARENT",
    }
    for name, expected in setting.items():
        assert (expected in message) == (name == what), message  # that one, not the others
    assert first.process is not None
    assert f"owner: pid {first.process.pid} (voidrun-server serve, data dir {first.data_dir})" in (
        message
    )
    with first.client() as client:  # the first one never noticed
        assert client.get("/health").status_code == 200


def test_the_claim_of_a_dead_server_does_not_block() -> None:
    """A claim file naming exactly this server's settings and a dead pid (nobody holds it)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    uid_base, parent = free_uid_base(), f"voidrun-t{secrets.token_hex(4)}"
    stale = CLAIMS / f"stale-test-{secrets.token_hex(4)}.json"
    CLAIMS.mkdir(parents=True, exist_ok=True)
    try:
        with sandbox_server(
            **QUIET,
            VOIDRUN_SANDBOX_UID_BASE=str(uid_base),
            VOIDRUN_CGROUP_PARENT=parent,
        ) as proc:
            # written now: the server re-reads claims only at its next start
            stale.write_text(
                json.dumps(
                    {
                        "data_dir": "/var/tmp/gone",
                        "pid": dead.pid,
                        "command": "voidrun-server serve",
                        "uid_first": uid_base,
                        "uid_end": uid_base + TEST_UID_RANGES * RANGE_SIZE,
                        "subnet": proc.sandbox_subnet,
                        "cgroups": [parent, f"{parent}-gvisor", f"{parent}-microvm"],
                    }
                )
            )
            proc.stop()
            proc.start()  # same settings, a stale claim of all of them on the host
            with proc.client() as client:
                box = create_sandbox(client)
                out = client.post(f"/sandboxes/{box['id']}/exec", json={"command": "true"})
                assert out.status_code == 200, out.text
                client.delete(f"/sandboxes/{box['id']}")
            # while it runs, the live claim (not the stale one) blocks a copy of it
            message = refused({"VOIDRUN_CGROUP_PARENT": parent})
            assert f"owner: pid {proc.process.pid if proc.process else 0} " in message, message
    finally:
        stale.unlink(missing_ok=True)
