"""The contract suite's outside view of the ``gvisor`` driver (see ``harness.py``)."""

from __future__ import annotations

import functools
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.drivers.harness import (
    TEST_AGENT_ROOT,
    TEST_RUNTIME_ROOT,
    _processes_mentioning,
    mountinfo_lines,
    new_sandbox_id,
)
from voidrun_server.agent_launch import agent_argv, install_agent
from voidrun_server.agent_runtime import install_runtime
from voidrun_server.drivers.base import SandboxInfo, SandboxSpec
from voidrun_server.drivers.gvisor import GvisorDriver
from voidrun_server.drivers.gvisor.layout import GvisorRun
from voidrun_server.drivers.namespace.disk import loop_devices_for


@dataclass
class GvisorHarness:
    state_dir: Path
    rootfs: Path
    cgroup_parent: str
    platform: str | None = None
    """The platform to use (None: let the driver probe; tests pass the session's answer)."""
    agent_dir: Path = field(default_factory=lambda: install_agent(TEST_AGENT_ROOT))
    drivers: list[GvisorDriver] = field(default_factory=list)
    name: str = "gvisor"
    forked: bool = False  # pid 1 is the agent itself (no zygote in gVisor)

    def new_driver(self, **overrides: Any) -> GvisorDriver:
        runtime = install_runtime(TEST_RUNTIME_ROOT)
        config: dict[str, Any] = {
            "agent_argv": functools.partial(agent_argv, python=runtime.python_argv()),
            "agent_dir": self.agent_dir,
            "runtime_dir": runtime.host_dir,
            "cgroup_parent": self.cgroup_parent,
            "platform": self.platform,
            "ready_timeout": 30.0,
        }
        config.update(overrides)
        driver = GvisorDriver(self.state_dir, **config)
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

    def run_dir(self, sandbox_id: str) -> GvisorRun:
        return GvisorRun.at(self.state_dir, sandbox_id)

    def read_writable(self, sandbox_id: str, path: str) -> bytes | None:
        try:
            return (self.run_dir(sandbox_id).upper / path.lstrip("/")).read_bytes()
        except FileNotFoundError:
            return None

    def kill_behind_back(self, info: SandboxInfo) -> None:
        assert info.pid is not None  # the sentry: the sandbox's kernel and every process in it
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
