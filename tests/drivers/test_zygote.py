"""The agent fork server (agent/zygote.py, drivers/namespace/zygote.py): what a forked agent
is, what it is not, and how failures end.

A forked agent must be exactly as confined as one bwrap exec'd (the isolation suite runs on
forked agents; these tests add what is specific to forking): the same credentials, capability
sets, no_new_privs and seccomp as the commands it runs; nothing of the host visible through
its own /proc entry; the sandbox ends when its agent does; and a zygote that dies or a child
that fails leaves a clear error and nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.drivers.contract import sh
from tests.drivers.harness import (
    TEST_AGENT_ROOT,
    TEST_RUNTIME_ROOT,
    NamespaceHarness,
    eventually,
    proc_status,
)
from voidrun_server.agent_launch import install_agent
from voidrun_server.agent_runtime import install_runtime, zygote_config
from voidrun_server.drivers import DriverError, DriverTimeoutError, SandboxState
from voidrun_server.drivers.namespace.state import read_record

pytestmark = [pytest.mark.sandbox]

STATUS_FIELDS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                 "NoNewPrivs", "Seccomp")  # fmt: skip


@pytest.fixture
def harness(namespace_harness: NamespaceHarness) -> NamespaceHarness:
    return namespace_harness


def agent_pid(harness: NamespaceHarness, sandbox_id: str) -> int:
    """The forked agent's host pid: the process in the sandbox's cgroup named voidrun-agent."""
    record = read_record(harness.run_dir(sandbox_id))
    assert record is not None
    for path in record.cgroups.values():
        for pid in Path(path, "cgroup.procs").read_text().split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "voidrun-agent":
                    return int(pid)
            except OSError:
                continue
    raise AssertionError("no voidrun-agent process in the sandbox's cgroups")


async def test_agent_is_confined_like_its_commands(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec()
    info = await driver.create(spec)
    agent = proc_status(agent_pid(harness, spec.sandbox_id))
    code, out = await sh(info, "cat /proc/self/status")
    assert code == 0, out
    command = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    for field in STATUS_FIELDS:
        host_view = agent[field].strip()
        if field in ("Uid", "Gid"):  # the host sees the sandbox's base uid, inside it is 0
            assert set(host_view.split()) == {str(info.agent_socket_owner)}, (field, host_view)
            assert set(command[field].split()) == {"0"}, (field, command[field])
        else:
            assert host_view == command[field].strip(), (field, host_view, command[field])
    assert agent["NoNewPrivs"].strip() == "1" and agent["Seccomp"].strip() == "2"
    assert agent["CapInh"].strip() == agent["CapAmb"].strip() == "0000000000000000"


async def test_agent_shows_no_host_paths_and_cannot_be_inspected(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec()
    info = await driver.create(spec)
    code, out = await sh(info, "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done")
    assert code == 0, out
    for host_path in (str(harness.state_dir), str(TEST_RUNTIME_ROOT), str(TEST_AGENT_ROOT)):
        assert host_path not in out, out
    assert "voidrun-agent" in out
    # the agent is not dumpable: root inside cannot read its memory map, environment or exe
    code, out = await sh(
        info,
        "a=$(grep -l voidrun-agent /proc/[0-9]*/comm | head -1 | cut -d/ -f3);"
        " cat /proc/$a/maps 2>&1 | head -1; cat /proc/$a/environ 2>&1 | head -c 100; echo;"
        " head -c1 /proc/$a/exe 2>&1 >/dev/null",
    )
    lines = out.splitlines()
    assert "Permission denied" in lines[0] and "Permission denied" in lines[-1], out
    assert "VOIDRUN" not in out and "PYTHONHOME" not in out, out


async def test_sandbox_ends_with_its_agent(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec()
    await driver.create(spec)
    os.kill(agent_pid(harness, spec.sandbox_id), signal.SIGKILL)

    async def gone() -> bool:
        return (await driver.inspect(spec.sandbox_id)).state is not SandboxState.RUNNING

    await eventually(gone)


async def test_a_dead_zygote_is_replaced(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    zygote = driver._host.zygote
    assert zygote is not None and zygote._proc is not None
    zygote._proc.kill()
    zygote._proc.wait()
    info = await driver.create(harness.spec())  # the next create starts a new one
    code, out = await sh(info, "echo ok")
    assert (code, out.strip()) == (0, "ok")


def broken_agent(tmp: Path, main_body: str) -> Path:
    """A copy of the installed agent whose entry point does ``main_body`` instead."""
    agent = tmp / "agent"
    shutil.copytree(install_agent(TEST_AGENT_ROOT), agent)
    (agent / "__main__.py").write_text(f"def main(argv=None):\n    {main_body}\n")
    os.chmod(tmp, 0o755)
    return agent


async def test_agent_that_exits_fails_create_cleanly(
    harness: NamespaceHarness, tmp_path: Path
) -> None:
    agent = broken_agent(tmp_path, "import sys; print('boom', file=sys.stderr); return 3")
    config = zygote_config(install_runtime(TEST_RUNTIME_ROOT), agent)
    driver = harness.new_driver(zygote=config)
    spec = harness.spec()
    with pytest.raises(DriverError) as err:
        await driver.create(spec)
    assert "exited before its agent became ready" in str(err.value)
    assert "boom" in str(err.value)  # the sandbox's log tail
    assert harness.leftovers(spec.sandbox_id) == []


async def test_agent_that_never_listens_times_out_cleanly(
    harness: NamespaceHarness, tmp_path: Path
) -> None:
    agent = broken_agent(tmp_path, "import time; time.sleep(1000)")
    config = zygote_config(install_runtime(TEST_RUNTIME_ROOT), agent)
    driver = harness.new_driver(zygote=config, ready_timeout=0.5)
    spec = harness.spec()
    with pytest.raises(DriverTimeoutError):
        await driver.create(spec)
    assert harness.leftovers(spec.sandbox_id) == []
