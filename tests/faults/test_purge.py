"""``voidrun-server purge``: a killed server's sandboxes (every org, every state) and network
are removed from the host; the command refuses while the server runs."""

from __future__ import annotations

import ipaddress
import json
import signal
from pathlib import Path

import pytest

from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess
from voidrun_server.drivers.namespace.leftovers import HostView, Leftover, find

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


def host_state(proc: ServerProcess, ids: list[str]) -> list[Leftover]:
    """Everything of this server on the host: below its data dir, its table and bridge, links
    routed into its subnet and its sandboxes' links and cgroups."""
    subnet = ipaddress.IPv4Network(proc.sandbox_subnet)
    view = HostView.read((proc.cgroup_parent,))
    return find(view, [proc.data_dir], [proc.state_dir.resolve()], [subnet], sandbox_ids=ids)


def kinds(found: list[Leftover]) -> set[str]:
    return {item.kind for item in found}


def test_purge_after_a_kill_leaves_nothing_and_refuses_while_serving() -> None:
    with sandbox_server() as proc:
        other_key = proc.new_tenant("other-org")
        with proc.client() as client, proc.client(other_key) as other:
            running = str(create_sandbox(client, name="running")["id"])
            paused = str(create_sandbox(client, name="paused")["id"])
            stopped = str(create_sandbox(client, name="stopped")["id"])
            foreign = str(create_sandbox(other, name="foreign")["id"])
            assert client.post(f"/sandboxes/{paused}/pause").status_code == 200
            assert client.post(f"/sandboxes/{stopped}/stop").status_code == 200
        # and the warm pool's sandboxes, which have no row
        ids = [p.name for p in proc.state_dir.iterdir() if len(p.name) == 24]
        assert {running, paused, stopped, foreign} <= set(ids)
        before = host_state(proc, ids)
        # what purge must remove is there (a check that could not fail would prove nothing)
        assert {"mount", "loop device", "link", "nft table", "cgroup", "process"} <= kinds(
            before
        ), before
        assert any("dnsmasq" in item.detail for item in before if item.kind == "process")

        refused = proc.cli("purge", "--yes")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "in use" in refused.stderr and "voidrun-server serve" in refused.stderr
        with proc.client() as client:
            statuses = {b["id"]: b["status"] for b in client.get("/sandboxes").json()["data"]}
        assert statuses == {running: "running", paused: "paused", stopped: "stopped"}

        proc.stop(signal.SIGKILL)
        assert kinds(host_state(proc, ids)) == kinds(before)  # they outlive a killed server
        purged = proc.cli("purge", "--yes", "--json")
        assert purged.returncode == 0, purged.stdout + purged.stderr
        report = json.loads(purged.stdout)
        assert sorted(report["sandboxes"]) == sorted(ids)
        assert report["left"] == [] and report["errors"] == []
        removed = {tuple(item) for item in report["removed"]}
        assert {(item.kind, item.name, item.detail) for item in before} <= removed
        assert host_state(proc, ids) == []
        assert not [p for p in Path(proc.state_dir).iterdir() if p.name in ids]

        again = proc.cli("purge", "--yes")  # nothing left: still succeeds, says so
        assert again.returncode == 0 and "nothing else was left" in again.stdout

        proc.start()  # the database was kept: the purged sandboxes read as killed
        with proc.client() as client:
            rows = {b["id"]: b["status"] for b in client.get("/sandboxes").json()["data"]}
        assert set(rows) == {running, paused, stopped}
        assert set(rows.values()) <= {"killed"}, rows
