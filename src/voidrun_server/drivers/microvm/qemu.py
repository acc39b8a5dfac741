"""QEMU's command line, its unprivileged launch, and the accelerator probe.

Each VM is one ``qemu-system-x86_64 -M microvm`` process:

* ``-nodefaults -no-user-config -nographic -no-reboot``: no default devices, no config files,
  and a guest reboot or panic ends the process (``panic=-1 reboot=t`` in the guest).
* ``-sandbox on,...=deny``: QEMU's own seccomp filter (no spawning, no privilege changes).
* It runs as the sandbox's own host uid (``setpriv``, no groups, no_new_privs) in new
  network, IPC and UTS namespaces (``unshare``; loopback only, not even the host's), inside
  the sandbox's cgroups (memory = guest RAM + QEMU's overhead, CPU quota = ``-smp``).
* Devices (virtio-mmio): four virtio-blk disks named by serial (``guest_init.py``), two
  virtio-serial ports on Unix socket chardevs (``server=on,wait=off``) for the agent (its
  main and its control port), QMP
  on another Unix socket, the serial console to a file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.base import DriverUnavailableError
from voidrun_server.drivers.microvm.assets import GuestAssets
from voidrun_server.drivers.microvm.guest_init import CONTROL_PORT_NAME, PORT_NAME

__all__ = [
    "GUEST_ARGS",
    "QEMU",
    "VmConfig",
    "find_tools",
    "probe_kvm",
    "qemu_argv",
    "qemu_version",
    "tsc_khz",
]

QEMU = "qemu-system-x86_64"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
TCG_TB_MB = 32  # TCG's translation cache (QEMU's default is 1 GiB): most of a VM's own memory
INSTALL_HINT = "apt-get install qemu-system-x86 busybox-static e2fsprogs util-linux"


@dataclass(frozen=True)
class VmConfig:
    accelerator: str  # "kvm" | "tcg"
    assets: GuestAssets
    cpu: int
    mem_mb: int
    image_disk: Path
    agent_disk: Path
    data_disk: Path
    config_disk: Path
    agent_socket: Path
    control_socket: Path
    qmp_socket: Path
    console: Path
    # snapshot templates and their clones (``template.py``): guest RAM in a file, shared with
    # the file (template) or a private copy-on-write mapping of it (clone); a clone has no
    # kernel of its own and loads its device state from an inherited fd
    ram_file: Path | None = None
    ram_shared: bool = False
    incoming_fd: int | None = None
    tb_mb: int = TCG_TB_MB


def find_tools() -> dict[str, str]:
    """Host programs the driver runs; DriverUnavailableError naming what to install."""
    found: dict[str, str] = {}
    for tool in (QEMU, "unshare", "setpriv", "mkfs.ext4", "apt-get", "dpkg-deb"):
        path = shutil.which(
            tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )
        if path is None:
            raise DriverUnavailableError(f"{tool} not found", hint=INSTALL_HINT)
        found[tool] = path
    return found


def tsc_khz() -> int | None:
    """The host TSC rate, for ``tsc_early_khz``: under TCG the guest's PIT calibration of the
    TSC can stall on a loaded host (and the guest then hangs at boot)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


# ``tsc=reliable``: under TCG the guest's clocksource watchdog compares the TSC (host time)
# with jiffies (timer interrupts, late under emulation), calls the TSC unstable and falls back
# to refined-jiffies: a 250 Hz tick even when idle (about 4% of a host core per idle VM here)
# and 4 ms clock resolution. The TSC is the reliable one; with it the idle guest is tickless.
GUEST_ARGS = (
    "console=ttyS0",
    "quiet",
    "panic=-1",
    "reboot=t",
    "rdinit=/init",
    "8250.nr_uarts=1",
    "tsc=reliable",
)


def _cmdline(extra: str = "") -> str:
    args = list(GUEST_ARGS)
    khz = tsc_khz()
    if khz:
        args.append(f"tsc_early_khz={khz}")
    return " ".join(args) + (f" {extra}" if extra else "")


def _machine(accelerator: str, tb_mb: int = TCG_TB_MB) -> list[str]:
    if accelerator == "kvm":
        return ["-M", "microvm", "-accel", "kvm", "-cpu", "host"]
    # TCG needs a timer source on microvm (without PIT/RTC: "No reference (HPET/PMTIMER)").
    return ["-M", "microvm,pit=on,rtc=on", "-accel", f"tcg,tb-size={tb_mb}", "-cpu", "max"]


def _drive(name: str, path: Path, *, readonly: bool) -> list[str]:
    opts = f"id={name},file={path},if=none,format=raw,aio=threads,cache=writeback"
    if readonly:
        opts += ",readonly=on"
    return ["-drive", opts, "-device", f"virtio-blk-device,drive={name},serial={name}"]


def qemu_argv(config: VmConfig) -> list[str]:
    machine = _machine(config.accelerator, config.tb_mb)
    if config.ram_file is not None:
        share = "on" if config.ram_shared else "off"
        machine[1] += ",memory-backend=ram0"
        machine += [
            "-object",
            f"memory-backend-file,id=ram0,size={config.mem_mb}M,"
            f"mem-path={config.ram_file},share={share}",
        ]
    argv = [QEMU, *machine]
    argv += ["-m", f"{config.mem_mb}M", "-smp", str(config.cpu)]
    argv += ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-sandbox", SANDBOX]
    if config.incoming_fd is None:
        argv += ["-kernel", str(config.assets.kernel), "-initrd", str(config.assets.initrd)]
        argv += ["-append", _cmdline()]
    else:  # a clone: RAM and CPU state come from the template, only devices are described
        argv += ["-incoming", "defer"]  # QMP sets x-ignore-shared, then migrate-incoming
    argv += ["-serial", f"file:{config.console}"]
    argv += _drive("vr-image", config.image_disk, readonly=True)
    argv += _drive("vr-data", config.data_disk, readonly=False)
    argv += _drive("vr-agent", config.agent_disk, readonly=True)
    argv += _drive("vr-config", config.config_disk, readonly=True)
    argv += ["-device", "virtio-serial-device,max_ports=3"]  # port 0 is the console's
    argv += ["-chardev", f"socket,id=agent,path={config.agent_socket},server=on,wait=off"]
    argv += ["-device", f"virtserialport,chardev=agent,name={PORT_NAME}"]
    argv += ["-chardev", f"socket,id=control,path={config.control_socket},server=on,wait=off"]
    argv += ["-device", f"virtserialport,chardev=control,name={CONTROL_PORT_NAME}"]
    argv += ["-qmp", f"unix:{config.qmp_socket},server=on,wait=off"]
    return argv


def unprivileged(argv: list[str], uid: int) -> list[str]:
    """``argv`` in new net/IPC/UTS namespaces, as ``uid`` with no groups and no_new_privs.
    Both wrappers exec, so the pid the caller sees is QEMU's."""
    return [
        "unshare", "--net", "--ipc", "--uts", "--",
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
        "--", *argv,
    ]  # fmt: skip


def probe_kvm(assets: GuestAssets, cache: Path, timeout: float) -> str:
    """ "kvm" if /dev/kvm boots the guest kernel to its init within ``timeout`` seconds, else
    "tcg". A /dev/kvm that cannot run a stock kernel (PVM hosts: no VT-x, KVM's instruction
    emulator) fails here. The answer is cached per host kernel, QEMU and guest kernel."""
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    key = f"{os.uname().release}-{assets.kernel.name}-{qemu_version()}".replace("/", "_")
    cached = cache / f"accel-{key}"
    try:
        return cached.read_text().strip()
    except FileNotFoundError:
        pass
    argv = [QEMU, *_machine("kvm"), "-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config"]
    argv += ["-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(assets.kernel)]
    argv += ["-initrd", str(assets.initrd), "-append", _cmdline("voidrun.probe")]
    result = "tcg"
    start = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if b"VOIDRUN_PROBE_OK" in done.stdout:
            result = "kvm"
    except (subprocess.TimeoutExpired, OSError):
        pass
    if result == "kvm" or time.monotonic() - start >= timeout:
        cached.write_text(result)  # a verdict, not a host too busy to answer
    return result


def qemu_version(*, build: bool = False) -> str:
    """``7.2.22`` and the like, or with ``build`` the whole line with the distribution's
    package version ("unknown" if QEMU cannot say)."""
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10)
        line = out.stdout.split("\n")[0]
        return line.strip() if build else line.split()[3]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"
