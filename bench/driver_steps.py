"""Driver-level create, step by step: where the time of one namespace-sandbox create goes.

Usage: .venv/bin/python bench/driver_steps.py [-n 30] [--exec] [--live N] [--network]   (root;
the code image must be built). ``--live N`` keeps N idle sandboxes alive while measuring (how a
create's steps grow with the host's sandbox count); ``--network`` wires every sandbox. By
default the agent is forked by the zygote, as the server does; ``--exec`` starts an
interpreter in every sandbox instead (VOIDRUN_AGENT_ZYGOTE=false).

Creates N sandboxes one after another through ``NamespaceDriver`` directly (no HTTP, no
database), destroys each, and prints p50/p95 of every step: disk image copy, loop mount,
claiming the layer for the sandbox's uid range, the idmapped image mount, spawning bwrap, and
waiting for the agent. To compare with an older checkout, run it with
``PYTHONPATH=<old checkout>/src``: steps that do not exist there are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import IMAGES, row
from voidrun_server.agent_launch import agent_argv, install_agent
from voidrun_server.agent_runtime import install_runtime, zygote_config
from voidrun_server.drivers.base import SandboxSpec
from voidrun_server.drivers.namespace import NamespaceDriver
from voidrun_server.drivers.namespace import disk as disk_module
from voidrun_server.drivers.namespace import driver as driver_module
from voidrun_server.drivers.namespace import host as host_module
from voidrun_server.drivers.namespace.network import NetworkConfig
from voidrun_server.drivers.namespace.purge import purge
from voidrun_server.images.build import build_code_image
from voidrun_server.services.images import SYSTEM_IMAGES

TIMES: dict[str, list[float]] = {}


def timed(module: Any, name: str, label: str) -> None:
    """Replace ``module.name`` by a wrapper that records its duration (if it exists)."""
    func: Callable[..., Any] | None = getattr(module, name, None)
    if func is None:
        return

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            TIMES.setdefault(label, []).append((time.perf_counter() - started) * 1000)

    setattr(module, name, wrapper)


def instrument() -> None:
    timed(disk_module, "provision_image", "copy disk template")
    timed(disk_module, "mount_image", "loop device + mount")
    timed(disk_module, "claim_layer", "chown layer to the sandbox range")
    try:
        from voidrun_server.drivers.namespace import idmount

        timed(idmount, "mount_idmapped", "idmapped image mount")
    except ImportError:
        pass
    timed(host_module, "launch", "spawn bwrap (setpriv) + handshake (+ fork)")
    try:
        from voidrun_server.drivers.namespace.zygote import Zygote

        timed(Zygote, "fork_agent", "zygote: fork the agent into the sandbox")
    except ImportError:
        pass
    ready = driver_module.wait_until_ready

    async def wait(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        await ready(*args, **kwargs)
        TIMES.setdefault("agent ready", []).append((time.perf_counter() - started) * 1000)

    driver_module.wait_until_ready = wait  # type: ignore[assignment]


async def run(driver: NamespaceDriver, rootfs: Path, n: int, live: int) -> None:
    kept = []
    try:
        for _ in range(live):  # idle sandboxes the measured creates happen next to
            spec = SandboxSpec(secrets.token_hex(12), "idle", rootfs, 1, 512, 256)
            await driver.create(spec)
            kept.append(spec.sandbox_id)
        await measure(driver, rootfs, n)
    finally:
        for sandbox_id in kept:
            await driver.destroy(sandbox_id)


async def measure(driver: NamespaceDriver, rootfs: Path, n: int) -> None:
    for i in range(n + 3):
        spec = SandboxSpec(secrets.token_hex(12), "bench", rootfs, 1, 512, 256)
        started = time.perf_counter()
        await driver.create(spec)
        elapsed = (time.perf_counter() - started) * 1000
        await driver.destroy(spec.sandbox_id)
        if i < 3:  # warm-up
            TIMES.clear()
        else:
            TIMES.setdefault("create (total)", []).append(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--exec", action="store_true", help="no zygote: exec an interpreter")
    parser.add_argument("--live", type=int, default=0, help="idle sandboxes kept meanwhile")
    parser.add_argument("--network", action="store_true", help="wire sandboxes (10.213/16)")
    args = parser.parse_args()
    instrument()
    rootfs = build_code_image(IMAGES, tag=SYSTEM_IMAGES["code"]).rootfs
    state = Path(tempfile.mkdtemp(prefix="voidrun-bench-", dir="/var/tmp"))
    state.chmod(0o711)
    try:
        agent_dir = install_agent(Path("/var/tmp/voidrun-test-agent"))
        runtime = install_runtime(Path("/var/tmp/voidrun-test-runtime"))
        driver = NamespaceDriver(
            state,
            agent_argv=functools.partial(agent_argv, python=runtime.python_argv()),
            agent_dir=agent_dir,
            runtime_dir=runtime.host_dir,
            cgroup_parent="voidrun-bench",
            zygote=None if args.exec else zygote_config(runtime, agent_dir),
            network=NetworkConfig(ipaddress.ip_network("10.213.0.0/16"), ("127.0.0.1",))
            if args.network
            else None,
        )
        try:
            asyncio.run(run(driver, rootfs, args.n, args.live))
        finally:
            driver.close()
    finally:  # the network's bridge, nft table and resolver too, then the directory
        purge(state, cgroup_parent="voidrun-bench")
        shutil.rmtree(state, ignore_errors=True)
    live = f", {args.live} idle sandboxes alive" if args.live else ""
    print(f"{'what (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={args.n}{live}")
    for label, values in TIMES.items():
        print(row(label, values))


if __name__ == "__main__":
    main()
