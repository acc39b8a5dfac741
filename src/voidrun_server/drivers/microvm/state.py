"""What the driver keeps on disk per sandbox, so a restarted server can re-adopt its VMs.

Layout of ``<state>/sandboxes/<id>/`` (root-owned, 0711)::

    record.json   SandboxRecord (root, 0600): limits, QEMU's uid, pid, cgroups, phase
    disk.img      the sandbox's ext4 disk          (owned by QEMU's uid)
    config.img    this boot's settings disk        (owned by QEMU's uid)
    console.log   the guest's serial console       (owned by QEMU's uid)
    qemu.log      QEMU's own stderr                (root; QEMU inherits the open fd)
    sock/         QEMU's uid, 0700: agent.sock, control.sock (virtio-serial), qmp.sock

QEMU, if compromised, could replace the sockets; the server therefore opens them with
``O_NOFOLLOW`` and checks their owner (``namespace/ready.py``), and never reads anything else
QEMU can write except the console log (as text, for error messages).
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voidrun_server.drivers.namespace.procs import ProcessRef

__all__ = ["Phase", "RunDir", "VmRecord", "read_record", "write_record"]


class Phase(enum.Enum):
    RUNNING = "running"  # QEMU started (running or paused; ``paused`` says which)
    STOPPED = "stopped"  # shut down on purpose, disk kept


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of(cls, state_dir: Path, sandbox_id: str) -> RunDir:
        return cls(state_dir / "sandboxes" / sandbox_id)

    @property
    def sandbox_id(self) -> str:
        return self.root.name

    @property
    def record(self) -> Path:
        return self.root / "record.json"

    @property
    def disk(self) -> Path:
        return self.root / "disk.img"

    @property
    def config(self) -> Path:
        return self.root / "config.img"

    @property
    def console(self) -> Path:
        return self.root / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.root / "qemu.log"

    @property
    def sock_dir(self) -> Path:
        return self.root / "sock"

    @property
    def agent_socket(self) -> Path:
        return self.sock_dir / "agent.sock"

    @property
    def control_socket(self) -> Path:
        return self.sock_dir / "control.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.sock_dir / "qmp.sock"

    def log_tail(self, lines: int = 15) -> str:
        """The end of the console and QEMU's stderr, for error messages."""
        parts = []
        for path in (self.console, self.qemu_log):
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.strip().splitlines()[-lines:])
            if tail:
                parts.append(f"{path.name}: {tail}")
        return "\n".join(parts)


@dataclass
class VmRecord:
    sandbox_id: str
    hostname: str
    cpu: int
    mem_mb: int
    disk_mb: int
    uid: int
    image_disk: str
    env: dict[str, str] = field(default_factory=dict)
    cgroups: dict[str, str] = field(default_factory=dict)
    phase: str = Phase.RUNNING.value
    paused: bool = False
    process: dict[str, int] | None = None
    # the running VM's RAM and vCPUs (fixed at boot); cpu/mem_mb may differ after a retarget
    # (a warm-pool VM handed out): they apply from the next boot
    ram_mb: int | None = None
    vcpus: int | None = None

    @property
    def qemu(self) -> ProcessRef | None:
        return ProcessRef.from_json(self.process)


def write_record(run: RunDir, record: VmRecord) -> None:
    tmp = run.record.with_name(".record.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, run.record)


def read_record(run: RunDir) -> VmRecord | None:
    try:
        with open(run.record) as f:
            data: dict[str, Any] = json.load(f)
        return VmRecord(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # half-written by a crash before the first rename: treated as absent
