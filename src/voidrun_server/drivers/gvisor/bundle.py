"""The OCI bundle of one sandbox: ``config.json`` next to the rootfs mount point.

What the spec says, and why:

* ``root``: the host overlay ``<run>/rootfs`` (image layers idmapped so that on-disk
  ``image base + N`` reads as ``N``, over the sandbox's own size-limited ext4 disk;
  ``layout.py``). gVisor's gofer serves it to the sentry; nothing inside sees host paths.
* ``process``: the agent, started by the bundled interpreter mounted read-only at
  ``/opt/voidrun/runtime`` (never the image's ``python3``), as root *inside gVisor's own
  kernel*; ``noNewPrivileges``. On the host the sentry runs as ``nobody`` in its own user
  namespace under runsc's seccomp filter, and the gofer as root, chrooted to the bundle.
* ``mounts``: ``/proc``, ``/sys`` (gVisor's own), the agent package and interpreter read-only,
  and the run directory (``<disk>/run``, inside the disk quota) at ``/run/voidrun``: with
  ``runsc --host-uds=create`` the agent's listening socket there is a real host socket the
  server connects to.
* ``linux.namespaces``: pid, ipc, uts, mount, and the network namespace: the sandbox's own,
  made and wired by the server (``netns``, as for the namespace driver; runsc runs
  ``--network=sandbox`` in it), or a fresh one (``--network=none``: loopback only). No
  ``linux.resources``: runsc runs with ``--ignore-cgroups`` and the driver puts the sentry,
  gofer and (ptrace platform) stub processes into the sandbox's cgroups itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["AGENT_MOUNT", "RUNTIME_MOUNT", "config", "write_config"]

AGENT_MOUNT = "/opt/voidrun/voidrun_agent"
RUNTIME_MOUNT = "/opt/voidrun/runtime"
RUN_MOUNT = "/run/voidrun"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What root inside may do (to gVisor's kernel, never the host's): the capabilities an
# ordinary container root has, without CAP_SYS_ADMIN, CAP_NET_RAW or CAP_SYS_PTRACE.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
]


def _bind(source: Path, destination: str, *, writable: bool = False) -> dict[str, object]:
    return {
        "destination": destination,
        "type": "bind",
        "source": str(source),
        "options": ["rbind", "rw" if writable else "ro", "nosuid", "nodev"],
    }


def config(
    *,
    rootfs: Path,
    hostname: str,
    argv: Sequence[str],
    agent_dir: Path,
    runtime_dir: Path | None,
    run_dir: Path,
    pids_max: int,
    netns: Path | None = None,
) -> dict[str, object]:
    caps = list(CAPABILITIES)
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
        _bind(agent_dir, AGENT_MOUNT),
        _bind(run_dir, RUN_MOUNT, writable=True),
    ]
    if runtime_dir is not None:
        mounts.append(_bind(runtime_dir, RUNTIME_MOUNT))
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(argv),
            "env": [f"PATH={SANDBOX_PATH}", "HOME=/root"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
            "rlimits": [{"type": "RLIMIT_NPROC", "hard": pids_max, "soft": pids_max}],
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                *({"type": t} for t in ("pid", "ipc", "uts", "mount")),
                {"type": "network", **({"path": str(netns)} if netns is not None else {})},
            ],
        },
    }


def write_config(bundle: Path, spec: dict[str, object]) -> None:
    """``<bundle>/config.json`` (root-only: the sandbox never sees the bundle directory)."""
    tmp = bundle / ".config.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(spec, indent=1).encode())
    finally:
        os.close(fd)
    os.replace(tmp, bundle / "config.json")
