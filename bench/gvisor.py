"""gVisor next to the namespace driver, at the driver level, in one run.

Usage: .venv/bin/python bench/gvisor.py [-n 20] [-e 100]   (root; runsc; the code image built)

For each driver: create p50/p95 (create + wait for the agent; destroyed after each), exec p50/p95
(``true`` through the agent on one open connection), and a syscall-heavy loop inside
(``os.stat`` 20,000 times in Python), beside the host floor for the same loop. The gVisor
driver is told the platform its probe picked (printed). Both drivers run from fresh state
dirs under /var/tmp, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import IMAGES, row
from voidrun_server.agent_launch import agent_argv, install_agent
from voidrun_server.agent_runtime import install_runtime, zygote_config
from voidrun_server.agentclient import AgentClient
from voidrun_server.drivers.base import Driver, SandboxSpec
from voidrun_server.drivers.gvisor import GvisorDriver
from voidrun_server.drivers.namespace import NamespaceDriver
from voidrun_server.images.build import build_code_image
from voidrun_server.services.images import SYSTEM_IMAGES

SYSCALLS = "import os, time; t = time.perf_counter(); [os.stat('/') for _ in range(20000)]; "
SYSCALLS += "print((time.perf_counter() - t) * 1000)"


async def measure(driver: Driver, rootfs: Path, n: int, execs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for i in range(n + 2):
        spec = SandboxSpec(secrets.token_hex(12), "bench", rootfs, 1, 512, 256)
        started = time.perf_counter()
        info = await driver.create(spec)
        elapsed = (time.perf_counter() - started) * 1000
        if i >= 2:  # warm-up
            times.setdefault("create", []).append(elapsed)
        if i == n + 1:
            owner = info.agent_socket_owner
            async with AgentClient(info.agent_socket, connect_timeout=10, owner_uid=owner) as a:
                for _ in range(execs):
                    t = time.perf_counter()
                    await a.exec("true", timeout=30)
                    times.setdefault("exec true", []).append((time.perf_counter() - t) * 1000)
                for _ in range(3):
                    result = await a.exec(f'python3 -c "{SYSCALLS}"', timeout=120)
                    times.setdefault("20k stat() inside", []).append(float(result.stdout_text))
        await driver.destroy(spec.sandbox_id)
    return times


def host_floor() -> list[float]:
    out = []
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", SYSCALLS], capture_output=True, text=True)
        out.append(float(result.stdout))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("-e", type=int, default=100, help="execs per driver")
    args = parser.parse_args()
    rootfs = build_code_image(IMAGES, tag=SYSTEM_IMAGES["code"]).rootfs
    agent_dir = install_agent(Path("/var/tmp/voidrun-test-agent"))
    runtime = install_runtime(Path("/var/tmp/voidrun-test-runtime"))
    common: dict[str, Any] = {
        "agent_argv": functools.partial(agent_argv, python=runtime.python_argv()),
        "agent_dir": agent_dir,
        "runtime_dir": runtime.host_dir,
        "cgroup_parent": "voidrun-bench",
    }
    results: dict[str, dict[str, list[float]]] = {}
    for name in ("namespace", "gvisor"):
        state = Path(tempfile.mkdtemp(prefix=f"voidrun-bench-{name}-", dir="/var/tmp"))
        state.chmod(0o711)
        try:
            driver: Driver
            if name == "namespace":
                driver = NamespaceDriver(state, zygote=zygote_config(runtime, agent_dir), **common)
            else:
                driver = GvisorDriver(state, **common)
                print(f"gvisor platform: {driver.platform} ({driver.platform_reason})")
            try:
                results[name] = asyncio.run(measure(driver, rootfs, args.n, args.e))
            finally:
                driver.close()  # type: ignore[attr-defined]
        finally:
            shutil.rmtree(state, ignore_errors=True)
    print(f"{'what (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={args.n}, execs={args.e}")
    print(row("host: 20k stat() (floor)", host_floor()))
    for name, times in results.items():
        for label, values in times.items():
            print(row(f"{name}: {label}", values))


if __name__ == "__main__":
    main()
