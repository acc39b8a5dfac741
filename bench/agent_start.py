"""The agent's own start-up on this host: spawn → socket accepts and answers ``ping``, and what
the idle agent costs in memory and modules, beside a bare interpreter measured in the same run.

Usage: .venv/bin/python bench/agent_start.py [-n 30]   (no root needed)

The agent starts exactly as ``tests/agent/conftest.py`` starts it (``agent_argv``, the package
under the name ``voidrun_agent`` in a temp mount, ``python -I -S``), from an installed copy with
compiled bytecode as drivers use (``install_agent``). For another checkout's agent, put its
``src`` first: ``PYTHONPATH=/path/to/other/src .venv/bin/python bench/agent_start.py``.

1. Start: the agent logs ``listening on …`` to stderr right after ``listen()``; this process
   reads that pipe (no polling, which would compete for the CPUs), then
   ``voidrun_server.agentclient`` connects, says hello and pings (so the client's own connect
   back-off does not quantise the figure; the ping part includes the client's work in this
   process). Baseline: spawn → exit of ``python -I -S -c pass``.
2. Memory of the idle agent (client connected, after the ping): ``Private_Dirty``, ``Pss`` and
   ``Rss`` from ``/proc/<pid>/smaps_rollup``.
3. Modules: one more start with ``-X importtime``; the modules imported until the ping answered.
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
from pathlib import Path

import anyio

import voidrun_server.agent_launch as launch
from voidrun_server.agentclient import AgentClient

PYTHON = os.path.realpath(sys.executable)


def wait_listening(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    """Block until the agent logs that it listens (it does so right after ``listen()``)."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.append(raw.decode(errors="replace"))
        if "INFO listening on" in lines[-1]:
            return
    raise RuntimeError(f"the agent did not start (exit status {proc.wait()})")


def smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        out[key] = int(value.split()[0])  # kB
    return out


def spawn_agent(argv: list[str]) -> subprocess.Popen[bytes]:
    """Blocking on purpose: nothing else runs in this process while an agent starts."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


async def start_once(
    mount: Path, home: Path, extra: list[str]
) -> tuple[float, float, dict[str, int], str]:
    """(ms to listening, ms to the answered ping, idle memory, the agent's stderr)."""
    sock = home / "agent.sock"
    argv = launch.agent_argv(str(sock), str(mount), python=(PYTHON, *extra))
    lines: list[str] = []
    started = time.perf_counter()
    proc = spawn_agent(argv)
    try:
        wait_listening(proc, lines)  # blocking, but nothing else runs in this process
        listening = time.perf_counter() - started
        async with AgentClient(sock, connect_timeout=30) as client:
            await client.ping()
            answered = time.perf_counter() - started
            await anyio.sleep(0.2)  # idle, connection held as the server holds it
            memory = smaps(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        lines += [raw.decode(errors="replace") for raw in proc.stderr]
        proc.wait(timeout=30)
    return listening * 1000, answered * 1000, memory, "".join(lines)


def bare(n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run([PYTHON, "-I", "-S", "-c", "pass"], check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def bare_memory() -> dict[str, int]:
    proc = subprocess.Popen([PYTHON, "-I", "-S", "-c", "import time; time.sleep(1)"])
    try:
        time.sleep(0.3)
        return smaps(proc.pid)
    finally:
        proc.wait()


def bare_imports() -> list[str]:
    log = subprocess.run(
        [PYTHON, "-X", "importtime", "-I", "-S", "-c", "pass"], capture_output=True, text=True
    ).stderr
    return [line for line in log.splitlines() if line.startswith("import time:")]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--list-modules", action="store_true", help="print every module name")
    anyio.run(measure, parser.parse_args())


async def measure(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="voidrun-agent-start-"))
    try:
        installed = launch.install_agent(work / "install")
        mount = work / "mount"
        mount.mkdir()
        (mount / launch.PACKAGE_NAME).symlink_to(installed)
        home = work / "home"
        home.mkdir()
        await start_once(mount, home, [])  # warm the page cache
        accepts, starts, private, pss, rss = [], [], [], [], []
        baseline: list[float] = []
        for _ in range(args.n):  # interleaved, so both see the same machine load
            baseline += bare(1)
            accept_ms, ms, memory, _ = await start_once(mount, home, [])
            accepts.append(accept_ms)
            starts.append(ms)
            private.append(memory["Private_Dirty"] / 1024)
            pss.append(memory["Pss"] / 1024)
            rss.append(memory["Rss"] / 1024)
        _, _, _, log = await start_once(mount, home, ["-X", "importtime"])
        modules = [
            line.split("|")[2].strip()
            for line in log.splitlines()
            if line.startswith("import time:") and "imported package" not in line
        ][1:]  # the first line is the header
        bare_mem = bare_memory()
        bare_modules = bare_imports()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"agent package: {launch.AGENT_PACKAGE_DIR}   python: {PYTHON}   n={args.n}")
    print(f"{'start (ms)':<46} {'p50':>8} {'p95':>8}")
    print(f"{'baseline: python -I -S -c pass (spawn → exit)':<46} {pct(baseline, .5):8.1f} "
          f"{pct(baseline, .95):8.1f}")  # fmt: skip
    print(f"{'agent: spawn → listening (its log line)':<46} {pct(accepts, .5):8.1f} "
          f"{pct(accepts, .95):8.1f}")  # fmt: skip
    print(f"{'agent: spawn → socket answers ping':<46} {pct(starts, .5):8.1f} "
          f"{pct(starts, .95):8.1f}")  # fmt: skip
    print()
    print(f"{'memory (MiB, p50)':<46} {'Private_Dirty':>13} {'Pss':>8} {'Rss':>8}")
    print(f"{'baseline: python -I -S (sleeping)':<46} {bare_mem['Private_Dirty'] / 1024:13.2f} "
          f"{bare_mem['Pss'] / 1024:8.2f} {bare_mem['Rss'] / 1024:8.2f}")  # fmt: skip
    print(f"{'agent: idle, one client connected':<46} {pct(private, .5):13.2f} "
          f"{pct(pss, .5):8.2f} {pct(rss, .5):8.2f}")  # fmt: skip
    print()
    print(f"modules imported (-X importtime): bare interpreter {len(bare_modules) - 1},"
          f" agent until it answered ping {len(modules)}")  # fmt: skip
    if args.list_modules:
        print(" ".join(sorted(modules)))


if __name__ == "__main__":
    main()
