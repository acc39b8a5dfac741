"""Pulls from a real registry on loopback (Debian's docker-registry), and the rules around them.

Root tier: the pull runs skopeo in a network namespace of its own. Every registry here listens on
127.0.0.1; refusals are proven by the target's own log (or a listener's accept count) staying
empty, next to a control pull that does show up there.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.support.oci_layouts import (
    Layout,
    busybox_layout,
    debian_old_python_layout,
    whiteout_layout,
)
from tests.support.registry import LocalRegistry, auth_registry, free_port, registry
from tests.support.tiers import skipif_tier

from voidrun_server.images.registry import (
    RegistryAuthError,
    RegistryLimitError,
    RegistryNotFoundError,
    RegistryPolicyError,
    pull_to_layout,
)

pytestmark = [
    pytest.mark.root,
    skipif_tier(os.geteuid() != 0, "root", "registry pulls run skopeo in a network namespace"),
]
__all__ = ["auth_registry", "registry"]  # fixtures

TIMEOUT = 120.0


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Layout]:
    root = tmp_path_factory.mktemp("layouts")
    return {
        "busybox": busybox_layout(root / "busybox"),
        "debian": debian_old_python_layout(root / "debian"),
        "whiteout": whiteout_layout(root / "whiteout"),
    }


def _pull(
    reference: str,
    dest: Path,
    *,
    allowed: list[str],
    insecure: bool = True,
    credentials: tuple[str, str] | None = None,
    lines: list[str] | None = None,
    max_bytes: int | None = None,
) -> Path:
    seen = lines if lines is not None else []
    return pull_to_layout(
        reference,
        dest,
        credentials=credentials,
        insecure=insecure,
        allowed_insecure=allowed,
        progress=lambda _fraction, line: seen.append(line),
        timeout=TIMEOUT,
        max_bytes=max_bytes,
    )


def _read_image(layout: Path) -> tuple[dict[str, object], dict[str, object], str]:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    blob = layout / "blobs" / "sha256"
    manifest = json.loads((blob / entry["digest"].split(":")[1]).read_text())
    config = json.loads((blob / manifest["config"]["digest"].split(":")[1]).read_text())
    return manifest, config, entry["annotations"]["org.opencontainers.image.ref.name"]


@pytest.mark.parametrize("name", ["busybox", "debian", "whiteout"])
def test_pull_gives_the_pushed_config_and_layers(
    registry: LocalRegistry, layouts: dict[str, Layout], name: str, tmp_path: Path
) -> None:
    source = layouts[name]
    reference = registry.push(source, f"test/{name}")
    lines: list[str] = []
    layout = _pull(reference, tmp_path, allowed=[registry.address], lines=lines)

    assert layout.parent.parent == tmp_path
    manifest, config, tag = _read_image(layout)
    assert tag == source.tag
    assert manifest["config"]["digest"] == source.config_digest  # type: ignore[index]
    assert [layer["digest"] for layer in manifest["layers"]] == source.layer_digests  # type: ignore[attr-defined]
    assert config["config"] == source.config["config"]
    for digest in source.layer_digests:
        assert (layout / "blobs" / "sha256" / digest.split(":")[1]).is_file()
    assert any(line.startswith("Copying blob") for line in lines)
    assert sorted(p.name for p in layout.parent.iterdir()) == ["layout"]  # no private files left


def test_pull_by_digest(
    registry: LocalRegistry, layouts: dict[str, Layout], tmp_path: Path
) -> None:
    reference = registry.push(layouts["busybox"], "test/by-digest")
    by_digest = f"{reference.rsplit(':', 1)[0]}@{layouts['busybox'].manifest_digest}"
    manifest, _, tag = _read_image(_pull(by_digest, tmp_path, allowed=[registry.address]))
    assert tag == "latest"
    assert manifest["config"]["digest"] == layouts["busybox"].config_digest  # type: ignore[index]


def test_wrong_password_gives_the_registrys_unauthorized(
    auth_registry: LocalRegistry, layouts: dict[str, Layout], tmp_path: Path
) -> None:
    reference = auth_registry.push(layouts["busybox"], "private/busybox")
    with pytest.raises(RegistryAuthError, match="unauthorized: authentication required"):
        _pull(reference, tmp_path, allowed=[auth_registry.address], credentials=("tester", "nope"))
    with pytest.raises(RegistryAuthError, match="unauthorized"):
        _pull(reference, tmp_path, allowed=[auth_registry.address])
    assert list(tmp_path.iterdir()) == []  # a failed pull leaves nothing behind
    assert _pull(
        reference, tmp_path, allowed=[auth_registry.address], credentials=auth_registry.credentials
    ).is_dir()


def test_unknown_tag_gives_manifest_unknown(
    registry: LocalRegistry, layouts: dict[str, Layout], tmp_path: Path
) -> None:
    reference = registry.push(layouts["busybox"], "test/tags")
    missing = reference.rsplit(":", 1)[0] + ":no-such-tag"
    with pytest.raises(RegistryNotFoundError, match="manifest unknown"):
        _pull(missing, tmp_path, allowed=[registry.address])


def test_unlisted_loopback_registry_is_refused_before_any_connection(
    registry: LocalRegistry, layouts: dict[str, Layout], tmp_path: Path
) -> None:
    reference = registry.push(layouts["busybox"], "test/unlisted")
    before = len(registry.requests())
    other_port = f"127.0.0.1:{registry.port + 1}"
    for allowed in ([], [other_port], ["localhost"]):
        with pytest.raises(RegistryPolicyError, match="VOIDRUN_IMAGE_INSECURE_REGISTRIES"):
            _pull(reference, tmp_path, allowed=allowed, insecure=False)
    assert len(registry.requests()) == before
    # the control: the same pull, listed, is in the registry's log
    _pull(reference, tmp_path, allowed=["127.0.0.1"], insecure=True)
    assert len(registry.requests()) > before


def test_insecure_flag_for_unlisted_registry_is_refused(
    registry: LocalRegistry, layouts: dict[str, Layout], tmp_path: Path
) -> None:
    reference = registry.push(layouts["busybox"], "test/insecure")
    before = len(registry.requests())
    with pytest.raises(RegistryPolicyError, match="insecure .* allowed only for registries listed"):
        _pull(reference, tmp_path, allowed=[f"127.0.0.1:{registry.port + 1}"], insecure=True)
    # a public-looking name is refused for the flag alone, before it is even resolved
    with pytest.raises(RegistryPolicyError, match="allowed only for registries listed"):
        _pull("registry.invalid/team/img:1", tmp_path, allowed=[], insecure=True)
    assert len(registry.requests()) == before


class _Listener:
    """A TCP port that counts connections (a target a pull must never reach)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def redirecting_registry() -> Iterator[tuple[str, list[str], _Listener]]:
    """A plain-HTTP 'registry' on 127.0.0.1 whose manifests redirect to ``locations[0]``."""
    target = _Listener()
    locations: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/v2/":
                self.send_response(200)
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                return
            self.send_response(307)
            self.send_header("Location", locations[0].format(port=target.port))
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", locations, target
    finally:
        server.shutdown()
        server.server_close()
        target.sock.close()


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        # not a loopback literal to Go, so it goes through the guard, which resolves it
        ("https://127.1:{port}/v2/x/manifests/1", "internal address 127.0.0.1"),
        # a loopback literal: Go skips the proxy, and the namespace's loopback is empty
        ("http://127.0.0.1:{port}/v2/x/manifests/1", "not an allowed registry address"),
    ],
)
def test_redirect_to_an_internal_address_is_refused(
    redirecting_registry: tuple[str, list[str], _Listener],
    location: str,
    reason: str,
    tmp_path: Path,
) -> None:
    address, locations, target = redirecting_registry
    locations.append(location)
    with pytest.raises(RegistryPolicyError, match=reason):
        _pull(f"{address}/x:1", tmp_path, allowed=[address])
    assert target.accepted == 0
    # the control: the listener does count connections
    socket.create_connection(("127.0.0.1", target.port)).close()
    for _ in range(100):
        if target.accepted:
            break
        threading.Event().wait(0.01)
    assert target.accepted == 1


def test_size_cap_stops_the_pull(
    registry: LocalRegistry, layouts: dict[str, Layout], tmp_path: Path
) -> None:
    reference = registry.push(layouts["debian"], "test/big")
    with pytest.raises(RegistryLimitError, match="larger than the limit of 100000 bytes"):
        _pull(reference, tmp_path, allowed=[registry.address], max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []


def _process_texts() -> Iterator[tuple[str, bytes]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                yield entry.name, (entry / part).read_bytes()
            except OSError:
                continue


def test_credentials_stay_out_of_logs_and_the_process_table(
    auth_registry: LocalRegistry,
    layouts: dict[str, Layout],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    assert auth_registry.password is not None
    secret = auth_registry.password.encode()
    reference = auth_registry.push(layouts["debian"], "private/debian")
    scans: list[bool] = []
    leaks: list[str] = []

    def scan(line: str) -> None:
        if not line.startswith("Copying blob"):
            return
        saw_skopeo = False
        for pid, text in _process_texts():
            saw_skopeo = saw_skopeo or b"skopeo" in text
            if secret in text:
                leaks.append(f"pid {pid}: {text[:200]!r}")
        scans.append(saw_skopeo)

    lines: list[str] = []
    pull_to_layout(
        reference,
        tmp_path / "ok",
        credentials=auth_registry.credentials,
        insecure=True,
        allowed_insecure=[auth_registry.address],
        progress=lambda _fraction, line: (lines.append(line), scan(line)),
        timeout=TIMEOUT,
    )
    assert scans and all(scans), "skopeo was running while the process table was read"
    assert leaks == []
    wrong = "Wr0ng-" + auth_registry.password
    with pytest.raises(RegistryAuthError) as failed:
        _pull(
            reference,
            tmp_path / "bad",
            allowed=[auth_registry.address],
            credentials=("tester", wrong),
            lines=lines,
        )
    for text in [*lines, str(failed.value), caplog.text]:
        assert auth_registry.password not in text
        assert wrong not in text
