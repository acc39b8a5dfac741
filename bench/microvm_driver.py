"""The microvm driver on its own (no HTTP): create, exec round trip, idle memory.

Usage: .venv/bin/python bench/microvm_driver.py [-n 5] [--accelerator auto|kvm|tcg]
       [--mode clone|cold|both]   (root)

``cold``: each create is a cold boot (QEMU exec -> guest kernel -> initramfs -> overlay root
-> the agent answering its first handshake on the virtio-serial socket). ``clone``: the first
create builds the shape's snapshot template (reported on its own), the others are clones
(restore -> cont -> handshake -> identity step). Exec is ``true`` through the agent (bash -c
inside the guest), beside ``bash -c true`` on the host, measured in the same run (the floor).
Idle CPU is the last VM's QEMU over 10 s with no host connection. Idle memory is QEMU's
PSS per VM with all ``n`` VMs up, after they settled for 3 s (PSS
splits shared pages, such as a template's RAM, between the VMs that map them). Needs the built
``code`` image (``make test`` builds it) in VOIDRUN_TEST_IMAGES_DIR.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.drivers.harness import TEST_AGENT_ROOT, TEST_RUNTIME_ROOT  # noqa: E402
from tests.support.images import CODE_TAG, IMAGES_DIR  # noqa: E402

from voidrun_server.agent_launch import install_agent  # noqa: E402
from voidrun_server.agent_runtime import install_runtime  # noqa: E402
from voidrun_server.agentclient import AgentClient  # noqa: E402
from voidrun_server.drivers.base import SandboxSpec  # noqa: E402
from voidrun_server.drivers.microvm import MicrovmDriver  # noqa: E402
from voidrun_server.images.build import CODE_IMAGE_NAME, find_built_image  # noqa: E402

CACHE = Path("/var/tmp/voidrun-test-microvm")  # the tests' cache: kernel, disks, templates


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def main(n: int, accelerator: str, mode: str) -> None:
    for clones in {"clone": [True], "cold": [False], "both": [False, True]}[mode]:
        await run(n, accelerator, clones)


async def run(n: int, accelerator: str, clones: bool) -> None:
    image = find_built_image(IMAGES_DIR, CODE_IMAGE_NAME, CODE_TAG)
    if image is None:
        raise SystemExit(f"no built code image in {IMAGES_DIR}: run make test first")
    runtime = install_runtime(TEST_RUNTIME_ROOT)
    state = Path(f"/var/tmp/voidrun-bench-microvm-{secrets.token_hex(4)}")
    driver = MicrovmDriver(
        state,
        agent_dir=install_agent(TEST_AGENT_ROOT),
        runtime_dir=runtime.host_dir,
        agent_python=runtime.python_argv(),
        cache_dir=CACHE,
        accelerator=accelerator,
        cgroup_parent="voidrun-bench-microvm",
        boot_timeout=180,
        clones=clones,
    )
    kind = "clone" if clones else "cold"
    print(f"== {kind} creates; accelerator: {driver.describe()}")
    creates, ids = [], []
    try:
        if clones:  # the first create of a shape builds its template (unless it is cached)
            before = template_dirs()
            spec = SandboxSpec(secrets.token_hex(12), "bench", image.rootfs, 1, 256, 256)
            start = time.perf_counter()
            await driver.create(spec)
            first = (time.perf_counter() - start) * 1000
            ids.append(spec.sandbox_id)
            built = template_dirs() != before
            what = "template build + clone" if built else "template cached: a clone"
            print(f"first create ({what}): {first:.0f} ms")
        for _ in range(n):
            spec = SandboxSpec(secrets.token_hex(12), "bench", image.rootfs, 1, 256, 256)
            start = time.perf_counter()
            info = await driver.create(spec)
            creates.append((time.perf_counter() - start) * 1000)
            ids.append(spec.sandbox_id)
        async with AgentClient(info.agent_socket, owner_uid=info.agent_socket_owner) as agent:
            execs = []
            for _ in range(50):
                start = time.perf_counter()
                assert (await agent.exec("true")).exit_code == 0
                execs.append((time.perf_counter() - start) * 1000)
        host = await anyio.to_thread.run_sync(host_floor)
        await anyio.sleep(3)
        assert info.pid is not None
        print(
            f"{kind} create (n={n}): p50 {statistics.median(creates):.0f} ms, "
            f"p95 {pct(creates, 0.95):.0f} ms"
        )
        print(
            f"exec 'true' (n=50): p50 {statistics.median(execs):.1f} ms, "
            f"p95 {pct(execs, 0.95):.1f} ms; host bash -c true p50 {statistics.median(host):.1f} ms"
        )
        busy = await anyio.to_thread.run_sync(idle_cpu, info.pid, 10.0)
        print(f"idle VM CPU (QEMU, 10 s, host connection closed): {busy:.1f}% of a core")
        pids = [(await driver.inspect(i)).pid for i in ids]
        pss = [await anyio.to_thread.run_sync(pss_mib, pid) for pid in pids if pid]
        print(
            f"idle VM (256 MiB guest, {len(pss)} up): QEMU PSS p50 "
            f"{statistics.median(pss):.0f} MiB, sum {sum(pss):.0f} MiB"
        )
    finally:
        for sandbox_id in ids:
            await driver.destroy(sandbox_id)
        driver.close()
        await anyio.to_thread.run_sync(clean_up, state)


def idle_cpu(pid: int, seconds: float) -> float:
    """QEMU's CPU use over ``seconds``, in percent of one core."""

    def used() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = used()
    time.sleep(seconds)
    return (used() - before) / seconds * 100


def template_dirs() -> set[str]:
    templates = CACHE / "templates"
    return {p.name for p in templates.iterdir()} if templates.is_dir() else set()


def host_floor() -> list[float]:
    host = []
    for _ in range(50):
        start = time.perf_counter()
        subprocess.run(["bash", "-c", "true"], check=True)
        host.append((time.perf_counter() - start) * 1000)
    return host


def clean_up(state: Path) -> None:
    shutil.rmtree(state, ignore_errors=True)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / "voidrun-bench-microvm").is_dir():
            (hierarchy / "voidrun-bench-microvm").rmdir()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--accelerator", default="auto", choices=("auto", "kvm", "tcg"))
    parser.add_argument("--mode", default="both", choices=("clone", "cold", "both"))
    args = parser.parse_args()
    anyio.run(main, args.n, args.accelerator, args.mode)
