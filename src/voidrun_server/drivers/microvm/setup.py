"""The microvm driver from the server's settings (the app calls :func:`build` in a thread:
the first call fetches the guest kernel and builds the initramfs and the agent disk)."""

from __future__ import annotations

from pathlib import Path

from voidrun_server.agent_runtime import Runtime
from voidrun_server.config import Settings
from voidrun_server.drivers.microvm.driver import MicrovmDriver
from voidrun_server.drivers.netshare import NetworkShare

__all__ = ["build"]


def state_dir(settings: Settings) -> Path:
    return settings.data_dir / "microvm"


def build(
    settings: Settings,
    *,
    agent_dir: Path,
    runtime: Runtime,
    network: NetworkShare | None = None,
) -> MicrovmDriver:
    """``agent_dir``: the installed agent package (``install_agent``); ``runtime``: its bundled
    interpreter (``install_runtime``), both copied once into the guest's agent disk.
    ``network``: unused, microvm guests have loopback only (docs/microvm.md)."""
    return MicrovmDriver(
        state_dir(settings),
        cache_dir=settings.microvm_cache_dir,
        agent_dir=agent_dir,
        runtime_dir=runtime.host_dir,
        agent_python=runtime.python_argv(),
        kernel_package=settings.microvm_kernel_package,
        accelerator=settings.microvm_accelerator,
        probe_timeout=settings.microvm_probe_timeout_seconds,
        boot_timeout=settings.microvm_boot_timeout_seconds,
        image_timeout=settings.microvm_image_timeout_seconds,
        qemu_overhead_mb=settings.microvm_qemu_overhead_mb,
        clones=settings.microvm_clones,
        tcg_tb_mb=settings.microvm_tcg_tb_mb,
        # one uid allocation table with the namespace driver: every sandbox's uids are its own
        uid_dir=settings.sandboxes_dir / ".uid-ranges",
        uid_base=settings.sandbox_uid_base,
        uid_ranges=settings.sandbox_uid_ranges,
        cgroup_parent=f"{settings.cgroup_parent}-microvm",
    )
