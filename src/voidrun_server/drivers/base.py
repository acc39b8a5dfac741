"""The sandbox driver interface: what the services layer may ask of a runtime.

A driver turns a :class:`SandboxSpec` into an isolated environment whose first process is the
agent, and reports what exists right now. It never touches the database: the services layer owns
the desired state and reconciles it against :meth:`Driver.inspect` / :meth:`Driver.recover`.

Optional capabilities are separate Protocols (:class:`Pausable`, :class:`Observable`,
:class:`Networked`, :class:`Exportable`) so callers check ``isinstance(driver, Pausable)``
instead of catching ``NotImplementedError``.

Exceptions::

    OperationFailedError (voidrun_server.errors, HTTP 500)
     └── DriverError                   a runtime operation failed; message says what to change
          ├── SandboxNotFoundError     no such sandbox on this node (nothing on disk)
          ├── SandboxStateError        the sandbox exists but is in the wrong state for this
          ├── DriverUnavailableError   the runtime cannot run on this host (carries .hint)
          ├── DriverTimeoutError       ran past its deadline (also a DeadlineExceededError)
          ├── UnsupportedByDriverError the sandbox's driver cannot do this (also an
          │                            InvalidInputError: 400)
          └── PortClosedError          nothing listens on that port in the sandbox (also a
                                       SandboxUnavailableError: 502)
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from voidrun_server.errors import (
    DeadlineExceededError,
    InvalidInputError,
    OperationFailedError,
    SandboxUnavailableError,
    ServiceUnavailableError,
)

__all__ = [
    "AgentTunnel",
    "Driver",
    "NetworkPolicy",
    "NetworkUsage",
    "Networked",
    "DriverError",
    "DriverTimeoutError",
    "DriverUnavailableError",
    "Exportable",
    "LayerExport",
    "Observable",
    "Pausable",
    "PortClosedError",
    "PortOpener",
    "Retargetable",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxSpec",
    "SandboxState",
    "SandboxStateError",
    "SandboxStats",
    "UnsupportedByDriverError",
]


@dataclass(frozen=True)
class NetworkPolicy:
    """Where a sandbox may connect to (docs/network.md). Entries are addresses, CIDRs, domain
    names or ``*.suffix`` wildcards, checked by ``netpolicy.problems`` before they get here.
    Deny wins over allow; a non-empty ``allow_out`` refuses everything else; without
    ``allow_internet`` nothing leaves, name lookups included; with ``allow_out`` the resolver
    forwards only names under its domains."""

    allow_internet: bool = True
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, object]:
        return {
            "allowInternetAccess": self.allow_internet,
            "allowOut": list(self.allow_out),
            "denyOut": list(self.deny_out),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, object]) -> NetworkPolicy:
        allow, deny = data.get("allowOut") or [], data.get("denyOut") or []
        assert isinstance(allow, list) and isinstance(deny, list)
        return cls(
            allow_internet=bool(data.get("allowInternetAccess", True)),
            allow_out=tuple(str(e) for e in allow),
            deny_out=tuple(str(e) for e in deny),
        )


@dataclass(frozen=True)
class NetworkUsage:
    """Bytes through the sandbox's link since it last started (its interface counters)."""

    rx_bytes: int
    """Received by the sandbox (downloads)."""
    tx_bytes: int
    """Sent by the sandbox (uploads, requests)."""


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a driver needs to build one sandbox; immutable once created."""

    sandbox_id: str
    """24 lowercase hex digits; names the run directory and the cgroup."""
    hostname: str
    """The sandbox name (DNS-1123 label); becomes the hostname inside."""
    rootfs: Path
    """Read-only image directory, uid-shifted: uid N inside is owned by ``image base + N`` on
    disk (the owner of the directory itself is the image base). Shared by many sandboxes."""
    cpu: int
    """Cores; becomes a CPU quota of ``cpu`` full cores."""
    mem_mb: int
    """Hard memory limit; exceeding it OOM-kills a process inside the sandbox only."""
    disk_mb: int
    """Size of the writable layer; writes beyond it fail with ENOSPC inside."""
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Written to the agent's env file; applied to commands the agent runs, not to the agent."""
    network: NetworkPolicy | None = None
    """Egress policy; None: the driver's default (a driver without networking: loopback only)."""
    layers: tuple[Path, ...] = ()
    """Further read-only image directories below ``rootfs``, nearest first (a snapshot image
    is its own layer over the image it was made from); shifted like ``rootfs``."""
    isolation: str | None = None
    """Which driver builds it (``DriverSet`` routes on it; drivers ignore it). None: the
    server's default."""


class SandboxState(enum.Enum):
    """What exists on this node right now (not what the database wants)."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    """No process, the writable layer is kept; :meth:`Driver.start` brings it back."""
    GONE = "gone"
    """Nothing usable: never created, destroyed, or its processes vanished behind our back."""


@dataclass(frozen=True)
class AgentTunnel:
    """How an API replica reaches the agent of a sandbox on a node (``drivers/remote``): a TCP
    connection to the node's tunnel listener, a hello line, then the agent's byte stream."""

    host: str
    port: int
    token: str = field(repr=False)
    sandbox_id: str


@dataclass(frozen=True)
class SandboxInfo:
    state: SandboxState
    agent_socket: Path
    """Host path of the agent's Unix socket. The directory is writable from inside the sandbox:
    open it without following symlinks (see ``namespace.ready.connect_agent_socket``)."""
    pid: int | None
    """Host pid of the sandbox's first process (the agent), when running or paused."""
    agent_socket_owner: int | None = None
    """Host uid that must own ``agent_socket`` (the sandbox's root, which differs per sandbox);
    callers refuse a socket owned by anyone else. None: unknown (nothing on disk)."""
    tunnel: AgentTunnel | None = None
    """Set by the remote driver: the agent is reached through its node's tunnel instead of
    ``agent_socket`` (which then names nothing on this host)."""


@dataclass(frozen=True)
class SandboxStats:
    """Kernel accounting for one sandbox; values the kernel does not expose are ``None``."""

    memory_bytes: int | None
    memory_limit_bytes: int | None
    cpu_usage_ns: int | None
    pids: int | None
    oom_kills: int | None
    """Processes the kernel OOM-killed inside this sandbox since it (re)started."""


class DriverError(OperationFailedError):
    message = "Sandbox runtime error"


class SandboxNotFoundError(DriverError):
    message = "Sandbox not found on this node"


class SandboxStateError(DriverError):
    message = "Sandbox is in the wrong state for this operation"


class DriverUnavailableError(ServiceUnavailableError, DriverError):
    """The runtime cannot work on this host; ``hint`` says what to install or change."""

    message = "Sandbox driver unavailable"

    def __init__(self, message: str | None = None, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message, hint)


class DriverTimeoutError(DeadlineExceededError, DriverError):
    message = "Sandbox runtime operation timed out"


class UnsupportedByDriverError(InvalidInputError, DriverError):
    """The sandbox's isolation cannot do what was asked, or is not run by this server."""

    message = "Not supported by this sandbox's isolation"


class PortClosedError(SandboxUnavailableError, DriverError):
    message = "Nothing listens on that port in the sandbox"


@runtime_checkable
class Driver(Protocol):
    """One runtime. Every method has its own deadline and leaves nothing behind on failure."""

    name: str

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Build and start a sandbox; returns once the agent socket accepts connections."""
        ...

    async def start(self, sandbox_id: str) -> SandboxInfo:
        """From STOPPED (or GONE with its disk still present): new processes, same disk."""
        ...

    async def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox and keep its writable layer."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Remove everything (processes, mounts, cgroups, devices, files). Idempotent."""
        ...

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        """What exists now; GONE when nothing usable does."""
        ...

    async def recover(self) -> dict[str, SandboxInfo]:
        """After a server restart: re-adopt every sandbox found on disk, keyed by id."""
        ...


@runtime_checkable
class Pausable(Protocol):
    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox (memory stays resident)."""
        ...

    async def resume(self, sandbox_id: str) -> None:
        """Thaw a paused sandbox."""
        ...


@dataclass(frozen=True)
class LayerExport:
    """What :meth:`Exportable.export_layer` copied."""

    entries: int
    bytes: int
    """File data copied (holes not counted)."""
    whiteouts: int
    """Files the sandbox deleted from its image, kept as deletions."""
    stripped_setuid: tuple[str, ...]
    skipped: tuple[str, ...]
    """Entries left out (sockets), as paths in the layer."""
    frozen_seconds: float
    """How long a running sandbox was frozen for the copy (0 when it was not running)."""


@runtime_checkable
class Exportable(Protocol):
    async def export_layer(self, sandbox_id: str, dest: Path, *, uid_base: int) -> LayerExport:
        """Copy what the sandbox changed over its image (its writable layer, deletions
        included) into the empty directory ``dest`` as an image layer owned ``uid_base + N``,
        at one point in time: a running sandbox is frozen for the copy and thawed after it,
        whatever happens; a paused one stays paused; a stopped one stays stopped."""
        ...


@runtime_checkable
class Retargetable(Protocol):
    async def retarget(
        self, sandbox_id: str, *, hostname: str, cpu: int, mem_mb: int, env: Mapping[str, str]
    ) -> None:
        """Give a running sandbox a new hostname, limits and environment (for warm pools)."""
        ...


@runtime_checkable
class Observable(Protocol):
    async def stats(self, sandbox_id: str) -> SandboxStats:
        """Current kernel accounting (memory, cpu, pids, OOM kills)."""
        ...


@runtime_checkable
class DiskAccounting(Protocol):
    def unwritten_disk_bytes(self) -> int:
        """Host bytes the sandboxes' sparse disks may still claim: size minus what is already
        allocated, summed over every disk on the data dir's filesystem. Blocking."""
        ...


@runtime_checkable
class Networked(Protocol):
    """Sandboxes wired to the host's uplink under an egress policy the sandbox cannot change.

    ``network_enabled`` is False when the driver runs its sandboxes loopback-only (its
    networking turned off). The preview proxy's way in is :class:`PortOpener`, with or
    without networking."""

    network_enabled: bool

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Apply a new policy to a running, paused or stopped sandbox; open connections are
        judged by it from their next packet on."""
        ...

    async def network_usage(self, sandbox_id: str) -> NetworkUsage | None:
        """Byte counters of the sandbox's link; None when it has none now (stopped)."""
        ...

    def network_usage_snapshot(self) -> dict[str, NetworkUsage]:
        """Counters of every wired sandbox (sysfs reads; cheap enough for a metrics scrape)."""
        ...

    async def netns_path(self, sandbox_id: str) -> Path:
        """A path to the sandbox's network namespace (for ``setns``); DriverError if none."""
        ...

    async def serve_network(self) -> None:
        """Run the host side that needs a process (the sandboxes' resolver) until cancelled;
        meant for the app's task group. Returns at once when networking is off."""
        ...


@runtime_checkable
class PortOpener(Protocol):
    async def open_port(self, sandbox_id: str, port: int, *, within: float) -> socket.socket:
        """A TCP connection to ``port`` on the sandbox's own loopback, reachable from nothing
        else on the host: connected, non-blocking, owned by the caller (who closes it).

        Raises :class:`PortClosedError` when nothing listens there, :class:`DriverTimeoutError`
        after ``within`` seconds, :class:`SandboxStateError` when the sandbox has no
        processes (stopped or gone)."""
        ...
