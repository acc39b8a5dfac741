"""A real ``voidrun-server serve`` process for tests, on a free port with its own data dir."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from tests.support import hostleaks

BIN = Path(sys.executable).with_name("voidrun-server")


class ApiServer(Protocol):
    """What route tests ask of a server: :class:`ServerProcess`, or the app in this process
    (``tests/support/inprocess.py``)."""

    api_key: str

    def client(self, key: str | None = None) -> httpx.Client: ...

    def new_tenant(self, org: str) -> str:
        """A new org with an owner and an API key; returns the plain key."""
        ...


class HostClaimTaken(RuntimeError):
    """The server refused to start: another live server claims its uid area or subnet."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_test_subnet() -> str:
    """A /24 for one test server's sandboxes that no host route overlaps (servers on one host
    must not share a subnet; the server refuses to start on an overlap)."""
    import ipaddress

    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    taken = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first and first != "default":
            taken.append(ipaddress.ip_network(first, strict=False))
    for _ in range(100):
        candidate = ipaddress.ip_network(
            f"10.{200 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24"
        )
        if not any(candidate.overlaps(net) for net in taken):
            hostleaks.track_subnet(str(candidate))  # for the session's leak guard
            return str(candidate)
    raise RuntimeError("no free /24 in 10.200.0.0/13 for test sandboxes")


# Test servers take their uid areas from here, below the default area (0x70000000..), so a
# server with default settings on this host never overlaps one; 256 ranges each (192 slots).
TEST_UID_AREA = (0x40000000, 0x70000000)
TEST_UID_RANGES = 256
CONFLICT = "another server on this host already uses"  # hostclaims' refusal


def free_uid_base() -> int:
    """A test uid area that no live server on this host claims (``hostclaims``); a server
    that starts at the same moment may still take it first: :meth:`ServerProcess.start`
    then picks again."""
    from voidrun_server.hostclaims import RANGE_SIZE, live_claims

    size = TEST_UID_RANGES * RANGE_SIZE
    claims = live_claims(Path("/run/voidrun/claims"))
    slots = range(TEST_UID_AREA[0], TEST_UID_AREA[1], size)
    free = [b for b in slots if not any(c.uid_first < b + size and b < c.uid_end for c in claims)]
    if not free:
        raise RuntimeError(f"no free test uid area in {TEST_UID_AREA}")
    return free[secrets.randbelow(len(free))]


def new_cgroup_parent() -> str:
    """A cgroup name of one test server (servers on one host must not share one)."""
    return f"voidrun-t{secrets.token_hex(4)}"


def host_slot_env(uid_base: int, cgroup_parent: str) -> dict[str, str]:
    """The settings that keep one test server's (or node daemon's) sandboxes apart from every
    other server's on this host, besides its subnet (docs/scale-out.md)."""
    return {
        "VOIDRUN_SANDBOX_UID_BASE": str(uid_base),
        "VOIDRUN_SANDBOX_UID_RANGES": str(TEST_UID_RANGES),
        "VOIDRUN_CGROUP_PARENT": cgroup_parent,
    }


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` and wait up to 20 s, then kill; a finished (or absent) process is left."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class ServerProcess:
    data_dir: Path
    database_url: str = ""
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: "vr_test_" + secrets.token_urlsafe(24))
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    sandbox_subnet: str = field(default_factory=free_test_subnet)
    # per server on this host, as docs/scale-out.md asks (checked at start: hostclaims.py)
    uid_base: int = field(default_factory=free_uid_base)
    cgroup_parent: str = field(default_factory=new_cgroup_parent)

    def __post_init__(self) -> None:
        # a test that names them itself: what the server really uses (purge, leak guard)
        self.uid_base = int(self.extra_env.get("VOIDRUN_SANDBOX_UID_BASE", self.uid_base))
        self.cgroup_parent = self.extra_env.get("VOIDRUN_CGROUP_PARENT", self.cgroup_parent)
        self.sandbox_subnet = self.extra_env.get("VOIDRUN_SANDBOX_SUBNET", self.sandbox_subnet)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOIDRUN_")}
        env.update(
            VOIDRUN_DATA_DIR=str(self.data_dir),
            VOIDRUN_PORT=str(self.port),
            VOIDRUN_BOOTSTRAP_API_KEY=self.api_key,
            VOIDRUN_DATABASE_URL=self.database_url,
            VOIDRUN_LOG_LEVEL="info",
            # The agent's bundled interpreter: built once per machine, not per test server.
            VOIDRUN_AGENT_RUNTIME_DIR="/var/tmp/voidrun-test-runtime",
            VOIDRUN_SANDBOX_SUBNET=self.sandbox_subnet,
            **host_slot_env(self.uid_base, self.cgroup_parent),
            # the other isolations start only where a test asks for them (their background
            # start probes a platform and fetches a guest kernel)
            VOIDRUN_ISOLATIONS='["namespace"]',
            # the platform probe (~10 s here: kvm hangs) has its own test in tests/drivers
            VOIDRUN_GVISOR_PLATFORM="ptrace",
        )
        env.update(self.extra_env)
        return env

    @property
    def state_dir(self) -> Path:
        """The namespace driver's state dir (sandboxes) of this server."""
        return self.data_dir / "sandboxes"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        for _ in range(5):
            try:
                return self._start(timeout)
            except HostClaimTaken:
                # a server started at the same moment took the area or subnet picked for this
                # one (only settings this class chose itself are picked again)
                self.uid_base = free_uid_base()
                self.sandbox_subnet = free_test_subnet()
        return self._start(timeout)

    def _start(self, timeout: float) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        hostleaks.track(self.state_dir, self.sandbox_subnet, self.cgroup_parent)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(BIN), "serve"], env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                text = self.log_path.read_text()
                this_run = self.log_path.read_bytes()[log_start:].decode(errors="replace")
                chosen = {"VOIDRUN_SANDBOX_UID_BASE", "VOIDRUN_SANDBOX_SUBNET"}
                if CONFLICT in this_run and not chosen & set(self.extra_env):
                    raise HostClaimTaken(this_run)
                raise RuntimeError(f"server exited early:\n{text}")
            try:
                if httpx.get(f"{self.api}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)
        self.process = None

    def stop_and_purge(self, sig: int = signal.SIGTERM) -> None:
        """Stop (sandboxes outlive a server on purpose) and remove everything the server
        left on the host: its sandboxes of every org, network and resolver."""
        self.stop(sig)
        others = [self.data_dir / n for n in ("gvisor", "microvm", "microvm/sandboxes")]
        if any(len(e.name) == 24 for d in others if d.is_dir() for e in d.iterdir()):
            # sandboxes of other isolations: the real command, which asks their drivers
            result = self.cli("purge", "--yes")
            assert result.returncode == 0, f"purge failed: {result.stdout}{result.stderr}"
        hostleaks.purge_state_dir(self.state_dir, self.cgroup_parent)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``voidrun-server ARGS`` against the same data dir and database."""
        return subprocess.run(
            [str(BIN), *args], env=self.env(), capture_output=True, text=True, timeout=60
        )

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"X-API-Key": key or self.api_key}, timeout=30
        )

    def new_tenant(self, org: str) -> str:
        """An independent tenant, created through the CLI while the server runs."""
        assert self.cli("orgs", "create", org).returncode == 0
        result = self.cli("users", "create", "--org", org, "--email", f"owner@{org}.example")
        assert result.returncode == 0, result.stderr
        result = self.cli("keys", "create", "--org", org, "--name", "main")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]
