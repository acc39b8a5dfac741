"""The contract suite's outside view of the microvm driver (see ``harness.py``).

Sandboxes are QEMU guests: their writable layer is an ext4 file the guest has mounted, so
:meth:`MicrovmHarness.read_writable` reads a sparse copy of it with e2fsprogs (journal replayed
on the copy, never on the live file). What the VMs share (kernel, initramfs, image and agent
disks) is cached across runs in ``TEST_CACHE``; the first run downloads the guest kernel with
apt and builds the image's ext4 (a minute or two).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.drivers.harness import (
    TEST_AGENT_ROOT,
    TEST_RUNTIME_ROOT,
    mountinfo_lines,
    new_sandbox_id,
)
from voidrun_server.agent_launch import install_agent
from voidrun_server.agent_runtime import install_runtime
from voidrun_server.drivers.base import SandboxInfo, SandboxSpec
from voidrun_server.drivers.microvm import MicrovmDriver
from voidrun_server.drivers.microvm.state import RunDir

TEST_CACHE = Path("/var/tmp/voidrun-test-microvm")


@dataclass
class MicrovmHarness:
    state_dir: Path
    rootfs: Path
    cgroup_parent: str
    drivers: list[MicrovmDriver] = field(default_factory=list)
    name: str = "microvm"
    mem_mb: int = 256

    def new_driver(self, **overrides: Any) -> MicrovmDriver:
        runtime = install_runtime(TEST_RUNTIME_ROOT)
        config: dict[str, Any] = {
            "agent_dir": install_agent(TEST_AGENT_ROOT),
            "runtime_dir": runtime.host_dir,
            "agent_python": runtime.python_argv(),
            "cache_dir": TEST_CACHE,
            "cgroup_parent": self.cgroup_parent,
            "boot_timeout": 120.0,
        }
        config.update(overrides)
        driver = MicrovmDriver(self.state_dir, **config)
        self.drivers.append(driver)
        return driver

    def spec(self, **overrides: Any) -> SandboxSpec:
        fields: dict[str, Any] = {
            "sandbox_id": new_sandbox_id(),
            "hostname": "sbx-test",
            "rootfs": self.rootfs,
            "cpu": 1,
            "mem_mb": self.mem_mb,
            "disk_mb": 64,  # one shape for the whole module: every create clones one template
            "env": {"VOIDRUN_TEST": "1"},
        }
        fields.update(overrides)
        return SandboxSpec(**fields)

    def run_dir(self, sandbox_id: str) -> RunDir:
        return RunDir.of(self.state_dir, sandbox_id)

    def read_writable(self, sandbox_id: str, path: str) -> bytes | None:
        """``path`` from the sandbox disk's ``upper/``, via a copy whose journal is replayed."""
        disk = self.run_dir(sandbox_id).disk
        with tempfile.TemporaryDirectory(prefix="voidrun-mvm-read-") as tmp:
            copy = Path(tmp) / "disk.img"
            subprocess.run(["cp", "--sparse=always", str(disk), str(copy)], check=True)
            subprocess.run(
                ["e2fsck", "-E", "journal_only", "-p", str(copy)], capture_output=True, check=False
            )
            done = subprocess.run(
                ["debugfs", "-R", f"cat /upper/{path.lstrip('/')}", str(copy)],
                capture_output=True,
                check=False,
            )
        if done.returncode != 0 or b"File not found" in done.stderr:
            return None
        return done.stdout

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
        if run.root.exists():
            left.append(f"run dir {run.root}")
        left += [f"process {pid}" for pid in _processes_mentioning(sandbox_id)]
        markers = self.state_dir / ".uid-ranges"
        for marker in markers.iterdir() if markers.is_dir() else ():
            if marker.is_symlink() and sandbox_id in os.readlink(marker):
                left.append(f"uid marker {marker}")
        return left


def _processes_mentioning(sandbox_id: str) -> list[int]:
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


def qemu_missing() -> str | None:
    """Why the microvm driver cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "microvm driver tests need root"
    for tool in ("qemu-system-x86_64", "debugfs", "e2fsck", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install qemu-system-x86 e2fsprogs busybox-static)"
    if not Path("/bin/busybox").is_file():
        return "busybox-static is not installed (apt-get install busybox-static)"
    return None
