"""A fake internet for network tests: a network namespace the test makes, nothing else.

``FakeInternet`` creates a namespace wired to the host by a veth pair on a random /28 of
198.51.100.0/24 (TEST-NET-2: ordinary internet for the sandbox policy, and nobody's real
network), with two web servers (``web`` and ``other`` addresses, answering ``web`` or
``other``) and a DNS zone served by dnsmasq: ``web.vr-test.example`` → web,
``other.vr-test.example`` → other, ``*.cdn.vr-test.example`` → web; :meth:`queried` tells
whether a name was asked. Test traffic never leaves this host. ``close`` removes namespace,
link, processes and the query log.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ZONE = "vr-test.example"
WEB_NAME = f"web.{ZONE}"
OTHER_NAME = f"other.{ZONE}"
SERVER = """
import http.server, socketserver, sys
class S(http.server.ThreadingHTTPServer):
    def server_bind(self):  # no getfqdn(): no DNS lookup from here
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "fake", 80
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = sys.argv[2].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
S((sys.argv[1], 80), H).serve_forever()
"""


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@dataclass
class FakeInternet:
    name: str = field(default_factory=lambda: f"vrt{secrets.token_hex(3)}")
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = ipaddress.IPv4Address("198.51.100.0") + 16 * secrets.randbelow(15) + 16
        self.host_address = str(base + 1)
        self.web = str(base + 2)
        self.other = str(base + 3)
        self.dns = self.web
        self.network = f"{base}/28"
        self.link = f"fi{self.name[3:]}"
        self.query_log = Path(tempfile.mkdtemp(prefix="voidrun-fakenet-")) / "queries.log"

    def start(self) -> FakeInternet:
        _ip("netns", "add", self.name)
        try:
            _ip(
                "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.name
            )
            _ip("addr", "add", f"{self.host_address}/28", "dev", self.link)
            _ip("link", "set", self.link, "up")
            inside = ["-n", self.name]
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{self.web}/28", "dev", "eth0")
            _ip(*inside, "addr", "add", f"{self.other}/28", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            # no default route: this namespace can answer the host's /28 and nothing else
            for address, answer in ((self.web, "web"), (self.other, "other")):
                self._spawn([sys.executable, "-c", SERVER, address, answer])
            dnsmasq = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin") or "dnsmasq"
            self._spawn(
                [
                    dnsmasq,
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--bind-interfaces",
                    f"--listen-address={self.dns}",
                    f"--address=/{WEB_NAME}/{self.web}",
                    f"--address=/{OTHER_NAME}/{self.other}",
                    f"--address=/cdn.{ZONE}/{self.web}",
                    "--log-queries",
                    f"--log-facility={self.query_log}",
                ]
            )
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, argv: list[str]) -> None:
        self.processes.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def _wait_ready(self) -> None:
        import socket

        deadline = time.monotonic() + 10
        for address, port in ((self.web, 80), (self.other, 80), (self.dns, 53)):
            while True:
                with socket.socket() as probe:
                    probe.settimeout(0.5)
                    if probe.connect_ex((address, port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fake internet: nothing on {address}:{port}")
                time.sleep(0.05)

    def queried(self, name: str) -> bool:
        """Whether the fake DNS was asked for ``name`` (dnsmasq logs each query as it comes)."""
        try:
            text = self.query_log.read_text()
        except FileNotFoundError:
            return False
        return any(f"] {name} from " in line for line in text.splitlines())

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _ip("link", "del", self.link, check=False)
        _ip("netns", "del", self.name, check=False)
        shutil.rmtree(self.query_log.parent, ignore_errors=True)
