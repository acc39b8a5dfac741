"""The sandboxes' resolver: one ``dnsmasq``, started and supervised by the server.

It listens on the gateway address only (sandboxes' ``/etc/resolv.conf`` points there; the
input rules let sandboxes reach nothing else on the host), forwards to the configured upstreams
(default: the host's own resolvers from /etc/resolv.conf) and, for every domain some policy
names, adds the IPv4 addresses it answered to that domain's nftables set (``--nftset``), which
is what makes domain entries in ``allowOut``/``denyOut`` enforceable.

dnsmasq reads its ``--nftset`` lines only at start, so a change of the set of domains restarts
it (tens of ms; :meth:`Resolver.update` returns once the new one answers). It is restarted
when it dies. A dnsmasq left behind by a previous server process (pid file) is ended first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from voidrun_server.drivers.base import DriverUnavailableError
from voidrun_server.drivers.namespace.nftables import DNS_MAX_TTL, domain_set

__all__ = ["Resolver", "conf_file", "find_dnsmasq", "host_resolvers", "resolver_dir"]

log = logging.getLogger(__name__)
RESTART_DELAY = 1.0
READY_TIMEOUT = 5.0


def find_dnsmasq() -> str:
    path = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise DriverUnavailableError(
            "dnsmasq is not installed (the sandboxes' resolver)",
            hint="apt-get install dnsmasq nftables, or VOIDRUN_SANDBOX_NETWORK=false",
        )
    return path


def resolver_dir(state_dir: Path) -> Path:
    """Where the resolver of the driver with this state dir keeps its files."""
    return state_dir / ".network"


# the resolvers a driver runs: everyone's, and the one for sandboxes with allowOut
RESOLVERS = ("dnsmasq", "dnsmasq-allowed")


def conf_file(work_dir: Path, name: str = RESOLVERS[0]) -> Path:
    """A dnsmasq's configuration; its path is on its command line (``--conf-file=``)."""
    return work_dir / f"{name}.conf"


def host_resolvers(resolv_conf: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The host's IPv4 nameservers (dnsmasq runs on the host, so a local stub works too)."""
    found: list[str] = []
    with contextlib.suppress(OSError), open(resolv_conf) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                found.append(parts[1])
    return tuple(found)


def _covers(domain: str, name: str) -> bool:
    return name == domain or name.endswith("." + domain)


def restricted_servers(upstreams: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """``server=`` values that forward names under ``allowed`` (and nothing else) the way
    ``upstreams`` would: an upstream for a zone (``/zone/ip``) keeps serving that zone."""
    generic = [u for u in upstreams if not u.startswith("/")]
    zoned = [u.split("/")[1:] for u in upstreams if u.startswith("/") and u.count("/") >= 2]
    servers: list[str] = []
    for domain in sorted(set(allowed)):
        above = [target for zone, target in zoned if _covers(zone, domain)]
        servers += [f"/{domain}/{target}" for target in (above or generic)]
        servers += [f"/{zone}/{target}" for zone, target in zoned if _covers(domain, zone)]
    return list(dict.fromkeys(servers))


class Resolver:
    """One dnsmasq. ``only`` None: it forwards every name; a set of domains: names under
    them only (every other name is answered NXDOMAIN without asking anyone)."""

    def __init__(
        self,
        work_dir: Path,
        listen: str,
        upstreams: Iterable[str],
        table: str,
        *,
        port: int = 53,
        only: Iterable[str] | None = None,
        name: str = RESOLVERS[0],
    ) -> None:
        self.binary = find_dnsmasq()
        self.work_dir = work_dir
        self.name = name
        self.listen = listen
        self.port = port
        self.upstreams = tuple(upstreams)
        self.table = table
        self.domains: frozenset[str] = frozenset()
        self.only = None if only is None else frozenset(only)
        self._changed = anyio.Event()
        self._ready = anyio.Event()
        self._generation = 0
        self._served = -1

    @property
    def conf_file(self) -> Path:
        return conf_file(self.work_dir, self.name)

    @property
    def pid_file(self) -> Path:
        return self.work_dir / f"{self.name}.pid"

    def config(self) -> str:
        if self.only is None:
            servers = list(self.upstreams)  # dnsmasq syntax: ip, ip#port, /dom/ip
        else:
            servers = ["/#/", *restricted_servers(self.upstreams, self.only)]
        lines = [
            "no-resolv",
            "no-hosts",
            "bind-interfaces",
            f"listen-address={self.listen}",
            f"port={self.port}",
            "cache-size=1000",
            f"max-ttl={DNS_MAX_TTL}",  # to sandboxes, and in its own cache: a name in use is
            f"max-cache-ttl={DNS_MAX_TTL}",  # asked upstream (its set refilled) this often
            f"pid-file={self.pid_file}",
            "log-facility=-",
            *(f"server={u}" for u in servers),
            *(f"nftset=/{d}/4#inet#{self.table}#{domain_set(d)}" for d in sorted(self.domains)),
        ]
        return "\n".join(lines) + "\n"

    def request(self, domains: Iterable[str], only: Iterable[str] | None = None) -> None:
        """Serve these domains' sets (and forward only ``only``, for a resolver made with
        ``only``): restarts dnsmasq when something changed, without waiting for it."""
        wanted = frozenset(domains)
        forward = None if self.only is None or only is None else frozenset(only)
        if wanted == self.domains and (forward is None or forward == self.only):
            return
        self.domains = wanted
        if forward is not None:
            self.only = forward
        self._generation += 1
        self._changed.set()

    async def ready(self) -> None:
        """Until a dnsmasq with everything requested so far answers (at most READY_TIMEOUT)."""
        target = self._generation
        with anyio.move_on_after(READY_TIMEOUT):
            while self._served < target:
                await self._ready.wait()

    async def update(self, domains: Iterable[str], only: Iterable[str] | None = None) -> None:
        """:meth:`request`, then :meth:`ready`."""
        self.request(domains, only)
        await self.ready()

    def _end_stale(self) -> None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.conf_file).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((self.listen, self.port)) == 0:
                    return
            time.sleep(0.005)

    async def serve(self) -> None:
        """Run dnsmasq until cancelled (the app's task group), restarting it as needed."""
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(self._end_stale)
        log_path = self.work_dir / f"{self.name}.log"
        while True:
            generation = self._generation
            self._changed = anyio.Event()
            log_fd = await anyio.to_thread.run_sync(self._prepare, log_path)
            try:
                process = await anyio.open_process(
                    [self.binary, "--keep-in-foreground", f"--conf-file={self.conf_file}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=log_fd,
                )
            finally:
                os.close(log_fd)
            exited = await self._run(process, generation)
            if exited:
                log.warning("the sandboxes' resolver (dnsmasq) exited; see %s", log_path)
                await anyio.sleep(RESTART_DELAY)

    def _prepare(self, log_path: Path) -> int:
        self.conf_file.write_text(self.config())
        return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    async def _run(self, process: anyio.abc.Process, generation: int) -> bool:
        """Until dnsmasq exits (True) or the domains change (False)."""
        exited = False
        try:
            await anyio.to_thread.run_sync(self._wait_listening)
            self._served = generation
            served, self._ready = self._ready, anyio.Event()  # waiters re-check, then wait anew
            served.set()
            async with anyio.create_task_group() as group:

                async def wait_exit() -> None:
                    nonlocal exited
                    await process.wait()
                    exited = True
                    group.cancel_scope.cancel()

                async def wait_change() -> None:
                    await self._changed.wait()
                    group.cancel_scope.cancel()

                group.start_soon(wait_exit)
                group.start_soon(wait_change)
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.terminate()
                    with anyio.move_on_after(2):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
        return exited
