"""A real OCI registry on loopback for tests: Debian's ``docker-registry`` (CNCF distribution).

Each :class:`LocalRegistry` has its own config file, storage dir and log, listens on a free port of
127.0.0.1 over plain HTTP, and optionally requires htpasswd (bcrypt) users. ``push`` copies an
OCI layout in with ``skopeo copy oci:DIR:TAG docker://127.0.0.1:PORT/NAME:TAG``, and
``requests()`` reads the registry's access log, so a test can prove a pull never reached it.

Fixtures: ``registry`` (session scope, anonymous) and ``auth_registry`` (module scope, user
``tester``); both skip as tier ``root`` when the packages are missing (`make install-test`
installs them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.oci_layouts import Layout
from tests.support.tiers import skip_tier

AUTH_USER = "tester"
_REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP')


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRegistry:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    password: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (AUTH_USER, self.password) if self.password is not None else None

    def reference(self, name: str, tag: str) -> str:
        return f"{self.address}/{name}:{tag}"

    def requests(self) -> list[str]:
        """``METHOD /v2/...`` for every request in the access log so far."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [f"{m.group(1)} {m.group(2)}" for m in _REQUEST.finditer(text)]

    def push(self, layout: Layout, name: str, tag: str | None = None) -> str:
        """Copy ``layout`` into the registry as ``name:tag``; returns the reference."""
        tag = tag or layout.tag
        reference = self.reference(name, tag)
        with tempfile.TemporaryDirectory(prefix="vr-push-") as tmp:
            auth = Path(tmp) / "auth.json"
            auths = {}
            if self.password is not None:
                pair = base64.b64encode(f"{AUTH_USER}:{self.password}".encode()).decode()
                auths[self.address] = {"auth": pair}
            auth.write_text(json.dumps({"auths": auths}))
            subprocess.run(
                [
                    "skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
                    "--dest-authfile", str(auth), f"oci:{layout.source}", f"docker://{reference}",
                ],
                check=True, capture_output=True, env={**os.environ, "HOME": tmp}, timeout=120,
            )  # fmt: skip
        return reference

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _htpasswd(path: Path, password: str) -> None:
    result = subprocess.run(
        ["htpasswd", "-i", "-B", "-n", AUTH_USER],
        input=password, check=True, capture_output=True, text=True,
    )  # fmt: skip
    path.write_text(result.stdout)


def start_registry(root: Path, *, auth: bool = False) -> LocalRegistry:
    """Start ``docker-registry`` with its own config under ``root``; waits until it answers."""
    missing = [tool for tool in ("docker-registry", "skopeo", "htpasswd") if not shutil.which(tool)]
    if missing:
        skip_tier(
            "root", f"{', '.join(missing)} missing (apt-get install docker-registry skopeo "
            "apache2-utils, or make install-test)"
        )  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    password = secrets.token_urlsafe(18) if auth else None
    config = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'storage'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if password is not None:
        _htpasswd(root / "htpasswd", password)
        config += [
            "auth:",
            "  htpasswd:",
            "    realm: voidrun-test",
            f"    path: {root / 'htpasswd'}",
        ]
    (root / "config.yml").write_text("\n".join(config) + "\n")
    log = (root / "registry.log").open("ab")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)},
    )  # fmt: skip
    log.close()
    registry = LocalRegistry(root=root, port=port, process=process, password=password)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {registry.log.read_text()[-2000:]}")
        try:
            answer = httpx.get(f"http://{registry.address}/v2/", timeout=1.0)
            if answer.status_code in (200, 401):
                return registry
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            registry.stop()
            raise RuntimeError("docker-registry did not answer within 30 s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    started = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    started = start_registry(tmp_path_factory.mktemp("auth-registry"), auth=True)
    try:
        yield started
    finally:
        started.stop()
