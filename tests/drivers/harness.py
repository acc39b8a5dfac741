"""What the driver contract suite needs from a driver that the driver API does not offer.

The contract (``contract.py``) talks to sandboxes only through the driver and the agent. A few
checks need an outside view: reading a file of a *paused* sandbox (its agent is frozen),
killing a sandbox behind the driver's back, and proving that ``destroy`` left nothing. Each
driver's test module supplies a :class:`DriverHarness` for that.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio

from voidrun_server.agent_launch import agent_argv, install_agent
from voidrun_server.agent_runtime import install_runtime, zygote_config
from voidrun_server.drivers.base import Driver, SandboxInfo, SandboxSpec
from voidrun_server.drivers.namespace import NamespaceDriver
from voidrun_server.drivers.namespace.disk import loop_devices_for
from voidrun_server.drivers.namespace.state import RunDir


class DriverHarness(Protocol):
    name: str

    def new_driver(self, **overrides: Any) -> Driver:
        """A fresh driver instance over the same on-disk state (a "server restart")."""
        ...

    def spec(self, **overrides: Any) -> SandboxSpec: ...

    def read_writable(self, sandbox_id: str, path: str) -> bytes | None:
        """Read ``path`` (absolute, inside) from the sandbox's writable layer, from outside."""
        ...

    def kill_behind_back(self, info: SandboxInfo) -> None:
        """Kill the sandbox's processes without telling the driver."""
        ...

    def leftovers(self, sandbox_id: str) -> list[str]:
        """Everything of the sandbox that still exists on the host (empty = clean)."""
        ...


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait until ``check()`` is true (tests only: polls every 10 ms)."""
    with anyio.fail_after(seconds):
        for _ in itertools.count():
            if await check():
                return
            await anyio.sleep(0.01)


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def read_text(path: str | Path) -> str:
    with open(path) as f:
        return f.read()


def host_can_fork() -> bool:
    return subprocess.run(["true"], check=False).returncode == 0


def new_sandbox_id() -> str:
    return secrets.token_hex(12)


def mountinfo_lines() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


# bwrap runs as the sandbox uid, which must reach the agent it mounts: not the checkout.
TEST_AGENT_ROOT = Path("/var/tmp/voidrun-test-agent")
TEST_RUNTIME_ROOT = Path("/var/tmp/voidrun-test-runtime")


@dataclass
class NamespaceHarness:
    state_dir: Path
    rootfs: Path
    cgroup_parent: str
    agent_argv: Callable[[str], list[str]] = agent_argv
    agent_dir: Path = field(default_factory=lambda: install_agent(TEST_AGENT_ROOT))
    drivers: list[NamespaceDriver] = field(default_factory=list)
    name: str = "namespace"
    forked: bool = True  # the agent comes from the zygote (the server's default)

    def new_driver(self, **overrides: Any) -> NamespaceDriver:
        runtime = install_runtime(TEST_RUNTIME_ROOT)
        config: dict[str, Any] = {
            "agent_argv": self.agent_argv,
            "agent_dir": self.agent_dir,
            "runtime_dir": runtime.host_dir,
            "zygote": zygote_config(runtime, self.agent_dir) if self.forked else None,
            "cgroup_parent": self.cgroup_parent,
            "ready_timeout": 30.0,
        }
        config.update(overrides)
        driver = NamespaceDriver(self.state_dir, **config)
        self.drivers.append(driver)
        return driver

    def spec(self, **overrides: Any) -> SandboxSpec:
        fields: dict[str, Any] = {
            "sandbox_id": new_sandbox_id(),
            "hostname": "sbx-test",
            "rootfs": self.rootfs,
            "cpu": 1,
            "mem_mb": 512,
            "disk_mb": 256,
            "env": {"VOIDRUN_TEST": "1"},
        }
        fields.update(overrides)
        return SandboxSpec(**fields)

    def run_dir(self, sandbox_id: str) -> RunDir:
        return RunDir.of(self.state_dir, sandbox_id)

    def read_writable(self, sandbox_id: str, path: str) -> bytes | None:
        try:
            return (self.run_dir(sandbox_id).upper / path.lstrip("/")).read_bytes()
        except FileNotFoundError:
            return None

    def kill_behind_back(self, info: SandboxInfo) -> None:
        assert info.pid is not None
        os.kill(info.pid, signal.SIGKILL)

    def cgroup_dirs(self, sandbox_id: str) -> list[Path]:
        found = []
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            candidate = hierarchy / self.cgroup_parent / sandbox_id
            if candidate.exists():
                found.append(candidate)
        return found

    def leftovers(self, sandbox_id: str) -> list[str]:
        run = self.run_dir(sandbox_id)
        left = [f"cgroup {p}" for p in self.cgroup_dirs(sandbox_id)]
        left += [f"mount {line}" for line in mountinfo_lines() if str(run.root) in line]
        left += [f"loop device {dev}" for dev in loop_devices_for(run.disk_image)]
        if run.root.exists():
            left.append(f"run dir {run.root}")
        left += [f"process {pid}" for pid in _processes_mentioning(sandbox_id)]
        return left


def _processes_mentioning(sandbox_id: str) -> list[int]:
    """Host processes whose command line names the sandbox's run directory (bwrap's)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if sandbox_id.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids
