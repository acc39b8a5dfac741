"""Exec round trips through the agent alone (no HTTP server), beside fork+exec baselines.

Usage: .venv/bin/python bench/agent_exec.py [-n 300]   (no root needed; as root it also times
exec as a user, ``nobody`` from the host's /etc/passwd, as an image's ``User`` runs)

Starts one agent as ``bench/agent_start.py`` does, then for each command runs 30 warm-ups and
N sequential ``exec`` requests through ``voidrun_server.agentclient`` and prints p50/p95 ms;
``ping`` shows the protocol's own round trip. Baselines in the same run:
``subprocess.run(["/bin/true"])`` and ``subprocess.run(["bash", "-c", "true"])``. For another
checkout's agent: ``PYTHONPATH=/path/to/other/src .venv/bin/python bench/agent_exec.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

import voidrun_server.agent_launch as launch
from _harness import time_runs
from voidrun_server.agentclient import AgentClient

PYTHON = os.path.realpath(sys.executable)
COMMANDS = ["true", "echo a b", "ls /", "echo $HOME"]


def row(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p95 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{label:<44} {p50:8.2f} {p95:8.2f}"


async def timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    for _ in range(30):
        await call()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def start_agent(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    installed = launch.install_agent(work / "install")
    mount = work / "mount"
    mount.mkdir()
    (mount / launch.PACKAGE_NAME).symlink_to(installed)
    sock = work / "agent.sock"
    argv = launch.agent_argv(str(sock), str(mount), python=(PYTHON,))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    return proc, sock


async def measure(sock: Path, n: int) -> list[str]:
    rows = []
    async with AgentClient(sock, connect_timeout=30) as client:
        for command in COMMANDS:

            async def run(command: str = command) -> object:
                return await client.exec(command)

            rows.append(row(f"exec {command!r}", await timed(run, n)))
        if os.geteuid() == 0:  # as an image's User: the child takes the ids (fork, not vfork)
            for command in ("true", "echo a b"):

                async def as_user(command: str = command) -> object:
                    return await client.exec(command, user="nobody")

                rows.append(row(f"exec {command!r} as user nobody", await timed(as_user, n)))
        rows.append(row("ping", await timed(client.ping, n)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="voidrun-agent-exec-"))
    proc, sock = start_agent(work)
    try:
        rows = anyio.run(measure, sock, args.n)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"agent package: {launch.AGENT_PACKAGE_DIR}   n={args.n}")
    print(f"{'round trip (ms)':<44} {'p50':>8} {'p95':>8}")
    print(row("baseline: subprocess.run(['/bin/true'])", time_runs(["/bin/true"], args.n)))
    bash = time_runs(["bash", "-c", "true"], args.n)
    print(row("baseline: subprocess.run(['bash', '-c', 'true'])", bash))
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
