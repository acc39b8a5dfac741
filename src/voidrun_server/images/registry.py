"""Pulling an image from an OCI registry into an OCI layout, with Debian's ``skopeo``.

``pull_to_layout`` checks the reference against the registry policy before anything connects
(``registry_policy``), then runs ``skopeo copy docker://REF oci:DIR:TAG`` in a network namespace
whose only way out is :class:`~.registry_guard.ConnectGuard`, which re-checks every connection
(redirects, token realms) and caps the bytes received. skopeo gets nothing of the host's own
container configuration: its policy, registries.conf and auth file are the pull's own, so an
operator's saved registry credentials are never used for a tenant's pull. Credentials reach it as
an auth file in a sealed memfd (``/dev/fd/N``): never on disk, never on a command line or in an
environment, and scrubbed from every line reported.

Pulls need root (``unshare --net``); without it they fail rather than run half-guarded.
"""

from __future__ import annotations

import base64
import fcntl
import ipaddress
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .reference import Reference, parse_reference
from .registry_errors import (
    RegistryAuthError,
    RegistryLimitError,
    RegistryNotFoundError,
    RegistryUnreachableError,
    explain_failure,
)
from .registry_guard import ConnectGuard, listen_in_netns
from .registry_policy import IPAddress, RegistryError, RegistryPolicy, RegistryPolicyError

__all__ = [
    "RegistryAuthError",
    "RegistryError",
    "RegistryLimitError",
    "RegistryNotFoundError",
    "RegistryPolicyError",
    "RegistryUnreachableError",
    "pull_to_layout",
]

Progress = Callable[[float | None, str], None]

_READY = "voidrun-netns-ready"
# Runs as root in fresh net + mount namespaces: loopback up, the listed registry's own addresses
# on it, its name pinned in /etc/hosts; then waits for the guard's port and becomes skopeo.
_NETNS_SCRIPT = (
    "set -e; ip link set lo up; "
    'for a in $VOIDRUN_LO_ADDRS; do ip addr add "$a" dev lo; done; '
    'if [ -n "$VOIDRUN_HOSTS" ]; then mount --bind "$VOIDRUN_HOSTS" /etc/hosts; fi; '
    f"echo {_READY}; read port; "
    'export HTTPS_PROXY="http://127.0.0.1:$port" https_proxy="http://127.0.0.1:$port"; '
    'unset VOIDRUN_LO_ADDRS VOIDRUN_HOSTS; exec "$@"'
)
_SEAL_ALL = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def pull_to_layout(
    reference: str,
    dest_dir: Path,
    *,
    credentials: tuple[str, str] | None,
    insecure: bool,
    allowed_insecure: Sequence[str],
    progress: Progress,
    timeout: float,
    max_bytes: int | None = None,
) -> Path:
    """Copy ``reference`` into a fresh OCI layout under ``dest_dir`` and return the layout's path.

    The layout holds the one image (for a multi-platform index, the host's platform) tagged with
    the reference's tag (``latest`` for a digest). Raises a :class:`RegistryError` subclass whose
    message is fit for the image's ``error``; nothing is left under ``dest_dir`` then.
    """
    ref = parse_reference(reference)
    policy = RegistryPolicy(allowed_insecure)
    if insecure:
        policy.check_insecure(ref.host, ref.port)
    addresses = policy.check(ref.endpoint_host, ref.port)  # before anything connects
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        # Without its own network namespace a redirect to a loopback literal or a plain-HTTP
        # URL would bypass the guard: fail closed rather than pull half-guarded.
        raise RegistryError("registry pulls need the server to run as root (with unshare)")
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise RegistryError("skopeo is not installed on the server (apt-get install skopeo)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pull-", dir=dest_dir))
    secrets = _secrets(credentials)
    try:
        layout = work / "layout"
        listed = addresses if policy.is_listed(ref.endpoint_host, ref.port) else []
        pull = _Pull(ref, work, skopeo, credentials, insecure, secrets)
        pull.registry_addresses = {str(a) for a in addresses}
        pull.run(policy, listed, progress, timeout, max_bytes, layout)
        shutil.rmtree(work / "run", ignore_errors=True)
        progress(1.0, f"pulled {ref}")
        return layout
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _secrets(credentials: tuple[str, str] | None) -> list[str]:
    if credentials is None:
        return []
    user, password = credentials
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [s for s in (password, pair) if s]


class _Pull:
    """One skopeo run: its private files, its namespace, its guard and its output."""

    def __init__(
        self,
        ref: Reference,
        work: Path,
        skopeo: str,
        credentials: tuple[str, str] | None,
        insecure: bool,
        secrets: list[str],
    ) -> None:
        self.ref = ref
        self.run_dir = work / "run"
        self.run_dir.mkdir(mode=0o700)
        self.skopeo = skopeo
        self.credentials = credentials
        self.insecure = insecure
        self.secrets = secrets
        self.lines: list[str] = []
        self.registry_addresses: set[str] = set()
        self.reader: threading.Thread | None = None

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def run(
        self,
        policy: RegistryPolicy,
        listed: list[IPAddress],
        progress: Progress,
        timeout: float,
        max_bytes: int | None,
        layout: Path,
    ) -> None:
        deadline = time.monotonic() + timeout
        guard = ConnectGuard(policy, max_bytes)
        auth_fd = self._auth_memfd()
        argv, env = self._command(layout, auth_fd, listed)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(auth_fd,),
                start_new_session=True,
                text=True,
            )
        except BaseException:
            guard.close()
            raise
        finally:
            os.close(auth_fd)
        try:
            self._start_netns_guard(proc, guard, listed)
            self._follow(proc, guard, progress, deadline, max_bytes, layout.parent)
        finally:
            guard.close()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if self.reader is not None:
                self.reader.join(timeout=5)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        self._check_result(proc.returncode, guard, timeout, max_bytes)

    def _auth_memfd(self) -> int:
        auths: dict[str, dict[str, str]] = {}
        if self.credentials is not None:
            user, password = self.credentials
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            auths[self.ref.registry] = {"auth": pair}
        fd = os.memfd_create("voidrun-registry-auth", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, json.dumps({"auths": auths}).encode())
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEAL_ALL)  # read-only from here on, for skopeo too
        return fd

    def _command(
        self, layout: Path, auth_fd: int, listed_addresses: list[IPAddress]
    ) -> tuple[list[str], dict[str, str]]:
        (self.run_dir / "policy.json").write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
        )
        (self.run_dir / "registries.conf").write_text("")
        (self.run_dir / "registries.d").mkdir()
        (self.run_dir / "tmp").mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.run_dir),
            "XDG_RUNTIME_DIR": str(self.run_dir),
            "XDG_CONFIG_HOME": str(self.run_dir),
            "TMPDIR": str(self.run_dir / "tmp"),
            "LANG": "C.UTF-8",
            "CONTAINERS_REGISTRIES_CONF": str(self.run_dir / "registries.conf"),
        }
        argv = [
            self.skopeo,
            "--policy", str(self.run_dir / "policy.json"),
            "--registries.d", str(self.run_dir / "registries.d"),
            "--tmpdir", str(self.run_dir / "tmp"),
            "copy",
            "--retry-times", "0",
            "--src-authfile", f"/dev/fd/{auth_fd}",
            f"--src-tls-verify={'false' if self.insecure else 'true'}",
            f"docker://{self.ref}",
            f"oci:{layout}:{self.ref.layout_tag}",
        ]  # fmt: skip
        lo = [f"{a}/{a.max_prefixlen}" for a in listed_addresses if not _loopback(a)]
        env["VOIDRUN_LO_ADDRS"] = " ".join(lo)
        env["VOIDRUN_HOSTS"] = ""
        host = self.ref.endpoint_host
        if listed_addresses and host != "localhost" and not _is_literal(host):
            hosts = self.run_dir / "hosts"
            hosts.write_text(
                "127.0.0.1 localhost\n::1 localhost\n"
                + "".join(f"{a} {host}\n" for a in listed_addresses)
            )
            env["VOIDRUN_HOSTS"] = str(hosts)
        wrapped = ["unshare", "--net", "--mount", "--", "sh", "-c", _NETNS_SCRIPT, "sh"]
        return wrapped + argv, env

    def _start_netns_guard(
        self, proc: subprocess.Popen[str], guard: ConnectGuard, listed: list[IPAddress]
    ) -> None:
        """Once the namespace is up: forwarders for the listed registry, then the proxy."""
        assert proc.stdin is not None and proc.stdout is not None
        first = proc.stdout.readline().strip()
        if first != _READY:
            raise RegistryError(f"could not isolate the pull: {self.scrub(first)}")
        port = self.ref.port
        targets = [(str(a), port) for a in listed]
        problems: list[str] = []
        for address, _ in targets:
            try:
                (sock,) = listen_in_netns(proc.pid, [(address, port)])
            except OSError as exc:  # e.g. ::1 where the namespace has no IPv6: the others do
                problems.append(f"{address}: {exc}")
                continue
            guard.serve_forward(sock, address, port)
        try:
            if targets and len(problems) == len(targets):
                raise OSError("; ".join(problems))
            (proxy,) = listen_in_netns(proc.pid, [("127.0.0.1", 0)])
        except OSError as exc:
            raise RegistryError(f"could not isolate the pull: {exc}") from None
        guard.serve_connect(proxy)
        proc.stdin.write(f"{proxy.getsockname()[1]}\n")
        proc.stdin.close()

    def _follow(
        self,
        proc: subprocess.Popen[str],
        guard: ConnectGuard,
        progress: Progress,
        deadline: float,
        max_bytes: int | None,
        area: Path,
    ) -> None:
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        self.reader = threading.Thread(target=read, name="skopeo-output", daemon=True)
        self.reader.start()
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if line is None:
                return
            if line:
                line = self.scrub(line)
                self.lines = [*self.lines[-49:], line]
                progress(None, line)
            if time.monotonic() > deadline or guard.over_limit:
                return
            if max_bytes is not None and _tree_size(area) > max_bytes:
                guard.over_limit = True
                return

    def _check_result(
        self, returncode: int, guard: ConnectGuard, timeout: float, max_bytes: int | None
    ) -> None:
        if guard.over_limit:
            raise RegistryLimitError(
                f"pulling {self.ref} stopped: the image is larger than the limit of "
                f"{max_bytes} bytes"
            )
        if returncode == 0:
            return
        if returncode < 0:
            raise RegistryUnreachableError(f"pulling {self.ref} did not finish in {timeout:g} s")
        raise explain_failure(
            self.ref,
            self.lines,
            [self.scrub(text) for text in guard.refusals],
            [self.scrub(text) for text in guard.failures],
            self.registry_addresses,
        )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _loopback(address: IPAddress) -> bool:
    return address.is_loopback or (
        isinstance(address, ipaddress.IPv6Address)
        and address.ipv4_mapped is not None
        and address.ipv4_mapped.is_loopback
    )


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
