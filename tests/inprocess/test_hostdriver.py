"""The host driver's own promises (``tests/support/hostdriver.py``): what it does for pause,
stop, stats and recovery is real, what it cannot do it refuses, and no setting selects it."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from tests.agent.agent_helpers import is_running
from tests.api.test_exec import run
from tests.inprocess.conftest import MakeSandbox
from tests.support.hostdriver import HostDriver, process_tree
from tests.support.inprocess import InProcessServer
from voidrun_server.drivers.base import (
    DriverError,
    DriverUnavailableError,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
)
from voidrun_server.drivers.registry import create_driver, driver_names


def agent_pid(server: InProcessServer, sandbox_id: str) -> int:
    info = server.call(server.driver.inspect, sandbox_id)
    assert info.state is SandboxState.RUNNING and info.pid is not None
    return info.pid


def states(root: int) -> set[str]:
    return {proc.state for proc in process_tree(root)}


def test_no_setting_selects_the_host_driver(tmp_path: Path) -> None:
    assert all("host" not in name for name in driver_names())
    with pytest.raises(DriverUnavailableError):
        create_driver("host", state_dir=tmp_path)


def test_pause_stops_the_whole_tree_and_resume_continues_it(
    server: InProcessServer, client: httpx.Client, make_sandbox: MakeSandbox
) -> None:
    box = make_sandbox(name="frozen", autoSleep=False)
    started = client.post(f"/sandboxes/{box}/commands/run", json={"command": "sleep 300 & wait"})
    assert started.status_code == 200, started.text
    pid = agent_pid(server, box)
    assert len(process_tree(pid)) >= 3  # the agent, the shell, its sleep
    assert client.post(f"/sandboxes/{box}/pause").status_code == 200
    assert states(pid) <= {"T", "t"}
    assert server.call(server.driver.inspect, box).state is SandboxState.PAUSED
    assert client.post(f"/sandboxes/{box}/resume").status_code == 200
    assert not states(pid) & {"T", "t"}
    assert run(client, box, "echo awake")["stdout"] == "awake\n"


def test_stop_kills_what_left_its_session_and_keeps_the_home(
    server: InProcessServer, client: httpx.Client, make_sandbox: MakeSandbox
) -> None:
    box = make_sandbox(name="stopper")
    escaped = run(client, box, "echo kept > ~/f; setsid sleep 301 >/dev/null 2>&1 & echo $!")
    orphan = int(str(escaped["stdout"]))
    # the agent is a child subreaper: the orphan stays in its tree, so stop can find it
    assert orphan in {proc.pid for proc in process_tree(agent_pid(server, box))}
    assert client.post(f"/sandboxes/{box}/stop").status_code == 200
    assert not is_running(orphan)
    assert server.call(server.driver.inspect, box).state is SandboxState.STOPPED
    assert run(client, box, "cat ~/f")["stdout"] == "kept\n"  # auto-wake: same home


def test_stats_come_from_proc_and_claim_no_limits(
    server: InProcessServer, client: httpx.Client, make_sandbox: MakeSandbox
) -> None:
    box = make_sandbox(name="counted")
    stats = server.call(server.driver.stats, box)
    assert stats.pids is not None and stats.pids >= 1
    assert stats.memory_bytes and stats.cpu_usage_ns is not None
    assert (stats.memory_limit_bytes, stats.oom_kills) == (None, None)
    assert client.post(f"/sandboxes/{box}/stop").status_code == 200
    with pytest.raises(SandboxStateError):
        server.call(server.driver.stats, box)


def test_create_refuses_any_root_but_the_hosts(server: InProcessServer) -> None:
    sandbox_id = "a" * 24
    spec = SandboxSpec(sandbox_id, "image", Path("/var/empty"), cpu=1, mem_mb=64, disk_mb=64)
    with pytest.raises(DriverError, match="cannot run images"):
        server.call(server.driver.create, spec)
    assert not server.driver.run_dir(sandbox_id).exists()


def test_another_driver_on_the_same_dir_recovers_what_runs(
    server: InProcessServer, client: httpx.Client, make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    running, stopped = make_sandbox(name="alive"), make_sandbox(name="resting")
    assert client.post(f"/sandboxes/{stopped}/stop").status_code == 200
    again = HostDriver(server.driver.state_dir, agent_mount=tmp_path)
    found = anyio.run(again.recover)
    assert found[running].state is SandboxState.RUNNING
    assert found[running].pid == agent_pid(server, running)
    assert found[stopped].state is SandboxState.STOPPED
