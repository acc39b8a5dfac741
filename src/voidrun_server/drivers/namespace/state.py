"""On-disk state of one sandbox: the run directory and its ``state.json``.

Sandboxes outlive the server, so everything a restarted server needs to find, verify and tear
down a sandbox lives on disk, not in memory::

    <state_dir>/<id>/             root:<sandbox gid> 0710: only root and the sandbox's own
                                  uid (bwrap) may enter; other host users see nothing below
    <state_dir>/<id>/state.json   this record (written atomically: temp file + rename)
    <state_dir>/<id>/lower/       the image, idmapped to the sandbox's uid range, read-only
                                  (a mount while running or paused; see idmount.py)
    <state_dir>/<id>/lower.N/     the image's further layers (snapshots), N = 1.. downwards
    <state_dir>/<id>/netns        its network namespace, pinned by a bind mount (running,
                                  paused; see netns.py); owned by the host's user namespace
    <state_dir>/<id>/disk.img     sparse ext4 image: the sandbox's size-limited disk
    <state_dir>/<id>/disk/        its mount point (only while running or paused):
        upper/ work/              the overlay root's writable layer
        run/                      bind-mounted at /run/voidrun inside: agent socket, env file
        bwrap.log                 bubblewrap's (and the agent's) stdout/stderr

``run/``, the log and the overlay dirs live *inside* the size-limited filesystem because the
sandbox can write to all of them: on the host filesystem they would bypass the disk quota.
``run/`` and ``upper/`` are writable by the sandbox's root, so the server treats them as
hostile: it never follows a symlink there and never parses a file from there.

The record is replaced with ``rename`` but not fsync'ed: on ext4 (``auto_da_alloc``) a rename
over an existing file flushes its data first, and a power loss kills the sandbox's processes
anyway, so the only state that must survive is "stopped, disk kept", which the disk image is.
"""

from __future__ import annotations

import enum
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voidrun_server.drivers.namespace.procs import ProcessRef

__all__ = [
    "SANDBOX_ID_RE",
    "Phase",
    "RunDir",
    "SandboxRecord",
    "read_record",
    "records_in",
    "write_record",
]

STATE_VERSION = 1
SANDBOX_ID_RE = re.compile(r"^[0-9a-f]{24}$")
_LOWER_RE = re.compile(r"^lower(\.[0-9]{1,4})?$")

# Paths inside the sandbox.
SANDBOX_RUN_DIR = "/run/voidrun"
SANDBOX_SOCKET = f"{SANDBOX_RUN_DIR}/agent.sock"
SANDBOX_ENV_FILE = f"{SANDBOX_RUN_DIR}/env"


class Phase(enum.Enum):
    """What the driver last did to the sandbox (the kernel may disagree: inspect checks)."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RunDir:
    """Paths of one sandbox's run directory (pure: creates nothing)."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path, sandbox_id: str) -> RunDir:
        if not SANDBOX_ID_RE.match(sandbox_id):
            raise ValueError(f"sandbox id must be 24 lowercase hex digits, got {sandbox_id!r}")
        return cls(state_dir / sandbox_id)

    @property
    def sandbox_id(self) -> str:
        return self.root.name

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lower(self) -> Path:
        return self.root / "lower"

    def lower_at(self, index: int) -> Path:
        """Mount point of the image's ``index``-th layer from the top (0: ``lower``)."""
        return self.root / ("lower" if index == 0 else f"lower.{index}")

    def lower_mounts(self) -> list[Path]:
        """The layer mount points present on disk (whatever the record says; for teardown)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return [self.root / n for n in sorted(names) if _LOWER_RE.match(n)]

    @property
    def netns(self) -> Path:
        return self.root / "netns"

    @property
    def disk_image(self) -> Path:
        return self.root / "disk.img"

    @property
    def disk_mount(self) -> Path:
        return self.root / "disk"

    @property
    def upper(self) -> Path:
        return self.disk_mount / "upper"

    @property
    def work(self) -> Path:
        return self.disk_mount / "work"

    @property
    def run(self) -> Path:
        return self.disk_mount / "run"

    @property
    def socket(self) -> Path:
        return self.run / "agent.sock"

    @property
    def log_file(self) -> Path:
        return self.disk_mount / "bwrap.log"

    def log_tail(self, limit: int = 2000) -> str:
        """The end of bubblewrap's stderr, for error messages."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""


@dataclass
class SandboxRecord:
    """Everything needed to re-adopt or tear down a sandbox after a restart."""

    sandbox_id: str
    hostname: str
    rootfs: str
    cpu: int
    mem_mb: int
    disk_mb: int
    uid_base: int
    """Host uid (and gid) of root inside: the sandbox's own range is ``uid_base .. +65535``.
    100000 for sandboxes created before per-sandbox ranges (they keep it)."""
    phase: Phase
    cgroups: dict[str, str] = field(default_factory=dict)
    monitor: ProcessRef | None = None  # bwrap's monitor process (host pid namespace)
    init: ProcessRef | None = None  # the sandbox's pid 1: the agent
    net_address: str | None = None
    """Its IPv4 address on the sandbox subnet; None: loopback only (networking off)."""
    net_policy: dict[str, Any] | None = None
    """Its egress policy in wire form (``NetworkPolicy.to_wire``); None: the default."""
    layers: list[str] = field(default_factory=list)
    """Image layers below ``rootfs``, nearest first (``SandboxSpec.layers``)."""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "sandbox_id": self.sandbox_id,
            "hostname": self.hostname,
            "rootfs": self.rootfs,
            "cpu": self.cpu,
            "mem_mb": self.mem_mb,
            "disk_mb": self.disk_mb,
            "uid_base": self.uid_base,
            "phase": self.phase.value,
            "cgroups": dict(self.cgroups),
            "monitor": self.monitor.to_json() if self.monitor else None,
            "init": self.init.to_json() if self.init else None,
            "net_address": self.net_address,
            "net_policy": self.net_policy,
            "layers": list(self.layers),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxRecord:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        return cls(
            sandbox_id=str(data["sandbox_id"]),
            hostname=str(data["hostname"]),
            rootfs=str(data["rootfs"]),
            cpu=int(data["cpu"]),
            mem_mb=int(data["mem_mb"]),
            disk_mb=int(data["disk_mb"]),
            uid_base=int(data["uid_base"]),
            phase=Phase(data["phase"]),
            cgroups={str(k): str(v) for k, v in dict(data.get("cgroups") or {}).items()},
            monitor=ProcessRef.from_json(data.get("monitor")),
            init=ProcessRef.from_json(data.get("init")),
            net_address=str(data["net_address"]) if data.get("net_address") else None,
            net_policy=dict(data["net_policy"]) if data.get("net_policy") else None,
            layers=[str(layer) for layer in data.get("layers") or []],
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
        )


def write_record(run: RunDir, record: SandboxRecord) -> None:
    """Replace ``state.json`` atomically (readers see the old or the new record, never half)."""
    record.updated_at = time.time()
    tmp = run.root / f".state.json.{os.getpid()}.{threading.get_ident()}.tmp"
    data = json.dumps(record.to_json(), indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, run.state_file)


def read_record(run: RunDir) -> SandboxRecord | None:
    """The record, or None when there is none or it cannot be parsed (a torn create)."""
    try:
        with open(run.state_file, "rb") as f:
            return SandboxRecord.from_json(json.loads(f.read()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sandbox_ids(state_dir: Path) -> list[str]:
    """The sandbox directories under ``state_dir`` (any driver's: they share this layout),
    sorted; a missing ``state_dir`` holds none."""
    try:
        entries = sorted(os.scandir(state_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [
        e.name for e in entries if SANDBOX_ID_RE.match(e.name) and e.is_dir(follow_symlinks=False)
    ]


def records_in(state_dir: Path) -> list[tuple[RunDir, SandboxRecord]]:
    """Every sandbox under ``state_dir`` that has a record, with its run directory."""
    runs = [RunDir(state_dir / sandbox_id) for sandbox_id in sandbox_ids(state_dir)]
    return [(run, record) for run in runs if (record := read_record(run)) is not None]
