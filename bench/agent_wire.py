"""The agent client's own cost (``agentclient``): round trips to a real agent on the host.

Usage: .venv/bin/python bench/agent_wire.py [--seconds 3] [--rounds 3]   (no root, no sandbox)

Starts the agent as a plain subprocess (as ``tests/agent`` does, no sandbox around it) and
drives it with ``AgentClient`` on uvloop: ``ping`` (one small frame each way) sequentially and
from 32 concurrent tasks on one connection, then ``exec true`` from 32 tasks. Reports round
trips per second and the client process's CPU time per round trip (user + system, from
``os.times``: less disturbed by other load than latency). The agent's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from voidrun_server.agent_launch import AGENT_PACKAGE_DIR, PACKAGE_NAME, agent_argv
from voidrun_server.agentclient import AgentClient


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def load(agent: AgentClient, tasks: int, seconds: float, op: str) -> tuple[int, float]:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            if op == "ping":
                await agent.ping()
            else:
                result = await agent.exec("true")
                assert result.exit_code == 0
            done += 1

    before = cpu()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done, cpu() - before


async def run(socket: Path, seconds: float, rounds: int) -> None:
    cells = [("ping", 1), ("ping", 32), ("exec true", 32)]
    totals = {cell: [0, 0.0] for cell in cells}
    async with AgentClient(socket, connect_timeout=10) as agent:
        await load(agent, 4, 0.5, "ping")  # warm-up
        for _ in range(rounds):
            for op, tasks in cells:
                count, used = await load(agent, tasks, seconds, op)
                totals[op, tasks][0] += count
                totals[op, tasks][1] += used
    print(f"{rounds} rounds x {seconds:g} s; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'op':<12} {'tasks':>5} {'per s':>9} {'client CPU us/op':>17}")
    for (op, tasks), (count, used) in totals.items():
        rate = count / (seconds * rounds)
        print(f"{op:<12} {tasks:>5} {rate:9.0f} {used / max(count, 1) * 1e6:17.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop

    home = Path(tempfile.mkdtemp(prefix="voidrun-bench-agent-"))
    mount = home / "mount"
    shutil.copytree(AGENT_PACKAGE_DIR, mount / PACKAGE_NAME)
    socket = home / "run" / "agent.sock"
    argv = agent_argv(str(socket), str(mount), python=(sys.executable,))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
    try:
        uvloop.run(run(socket, args.seconds, args.rounds))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
