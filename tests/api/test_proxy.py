"""The preview proxy (docs/previews.md): declared ports of a real sandbox through both URL forms,
access rules, streaming, WebSockets, and servers inside that misbehave.

One server and one sandbox for the module. Inside: ``python3 -m http.server`` on 8000 (private),
``proxy_apps/upstream.py`` on 8001 (private) and on 8002 (declared public); 8003 is declared and
nobody listens there.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
DOMAIN = "preview.test"
APP = (Path(__file__).parent / "proxy_apps" / "upstream.py").read_bytes()
BIG_MB = 200
IDLE = 3
PORTS = [
    {"protocol": "http", "port": 8000},
    {"protocol": "http", "port": 8001},
    {"protocol": "http", "port": 8002, "public": True},
    {"protocol": "http", "port": 8003},
]


SERVER_ENV = {
    "VOIDRUN_PUBLIC_DOMAIN": DOMAIN,
    "VOIDRUN_PROXY_RESPONSE_TIMEOUT_SECONDS": "2",
    "VOIDRUN_PROXY_IDLE_TIMEOUT_SECONDS": str(IDLE),
    "VOIDRUN_PROXY_MAX_CONNECTIONS_PER_SANDBOX": "6",
    "VOIDRUN_SANDBOX_DISK_MB": "1024",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server(**SERVER_ENV) as proc:
        yield proc


@pytest.fixture(scope="module")
def isolation() -> dict[str, str]:
    """The box's isolation (the server's default here; test_proxy_relay.py runs these tests
    again on gvisor, whose ports only the agent relay reaches)."""
    return {}


@pytest.fixture(scope="module")
def box(server: ServerProcess, isolation: dict[str, str]) -> str:
    with server.client() as client:
        made = create_sandbox(client, name="preview", autoSleep=False, ports=PORTS, **isolation)
        sid = str(made["id"])
        upload = client.post(
            f"/sandboxes/{sid}/files/upload", params={"path": "/root/upstream.py"}, content=APP
        )
        assert upload.status_code == 200, upload.text
        made = client.post(
            f"/sandboxes/{sid}/exec",
            json={"command": f"head -c {BIG_MB}M /dev/urandom > /root/big.bin", "timeout": 120},
        )
        assert made.json()["data"]["exitCode"] == 0, made.text
        for command in (
            "cd /root && exec python3 -m http.server 8000 --bind 127.0.0.1",
            "exec python3 /root/upstream.py 8001",
            "exec python3 /root/upstream.py 8002",
        ):
            run = client.post(f"/sandboxes/{sid}/commands/run", json={"command": command})
            assert run.status_code == 200, run.text
        for port in (8000, 8001, 8002):
            wait_until_listening(client, sid, port)
        return sid


def wait_until_listening(client: httpx.Client, sid: str, port: int) -> None:
    for _ in range(300):
        if client.get(f"/sandboxes/{sid}/ports/{port}/").status_code != 502:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port}")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def port_url(server: ServerProcess, sid: str, port: int, path: str = "") -> str:
    return f"{server.api}/sandboxes/{sid}/ports/{port}/{path}"


def host_of(sid: str, port: int) -> str:
    return f"{port}-{sid}.{DOMAIN}"


def exec_out(client: httpx.Client, sid: str, command: str) -> str:
    response = client.post(f"/sandboxes/{sid}/exec", json={"command": command})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["stdout"])


# -- both URL forms ----------------------------------------------------------------------------


def test_http_server_answers_through_both_url_forms(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    by_path = client.get(f"/sandboxes/{box}/ports/8000/")
    assert by_path.status_code == 200, by_path.text
    assert "upstream.py" in by_path.text  # http.server's listing of /root
    by_host = httpx.get(
        f"{server.url}/", headers={"Host": host_of(box, 8000), "X-API-Key": server.api_key}
    )
    assert by_host.status_code == 200 and "upstream.py" in by_host.text
    no_slash = client.get(f"/sandboxes/{box}/ports/8000", follow_redirects=False)
    assert no_slash.status_code in (307, 308)
    assert no_slash.headers["location"].endswith(f"/sandboxes/{box}/ports/8000/")


def test_public_urls_are_real_urls(server: ServerProcess, box: str, client: httpx.Client) -> None:
    body = client.get(f"/sandboxes/{box}/public-urls").json()
    assert body["status"] == "success"
    items = {item["port"]: item for item in body["data"]}
    assert sorted(items) == [8000, 8001, 8002, 8003]
    assert items[8000]["url"] == f"http://{host_of(box, 8000)}:{server.port}/"
    assert items[8002]["public"] is True and items[8000]["public"] is False
    token = items[8000]["trafficToken"]
    assert token.startswith("vrt_") and all(i["trafficToken"] == token for i in items.values())
    # the host form URL answers when its name resolves to the server (here: by hand)
    answer = httpx.get(
        f"{server.url}/upstream.py", headers={"Host": host_of(box, 8000), "X-VoidRun-Token": token}
    )
    assert answer.status_code == 200 and answer.content == APP


# -- access ------------------------------------------------------------------------------------


def test_access_rules(server: ServerProcess, box: str, client: httpx.Client) -> None:
    url = port_url(server, box, 8001, "headers")
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-VoidRun-Token": "vrt_nope"}).status_code == 401
    assert httpx.get(port_url(server, "0" * 24, 8001)).status_code == 401  # no existence leak
    assert httpx.get(port_url(server, box, 8002, "headers")).status_code == 200  # public
    assert client.get(f"/sandboxes/{box}/ports/9999/").status_code == 404  # undeclared
    missing = client.get(f"/sandboxes/{box}/ports/8003/")
    assert missing.status_code == 502
    assert missing.json()["error"] == "nothing listens on port 8003 in the sandbox"
    with server.client(server.new_tenant("proxy-intruders")) as intruder:
        other = intruder.get(f"/sandboxes/{box}/ports/8001/headers")
        unknown = intruder.get(f"/sandboxes/{'0' * 24}/ports/8001/headers")
        assert other.status_code == 404
        assert other.json() == unknown.json()
        assert intruder.get(f"/sandboxes/{box}/ports/8002/headers").status_code == 200


def test_traffic_token_in_header_query_and_cookie(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    token = client.get(f"/sandboxes/{box}/public-urls").json()["data"][0]["trafficToken"]
    url = port_url(server, box, 8001, "headers")
    assert httpx.get(url, headers={"X-VoidRun-Token": token}).status_code == 200
    with httpx.Client() as browser:
        first = browser.get(url, params={"voidrun_token": token, "keep": "1"})
        assert first.status_code == 200
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and f"Path=/api/sandboxes/{box}/ports/8001/" in cookie
        seen = first.json()
        assert seen["path"] == "/headers?keep=1"  # the token stays here
        again = browser.get(url)  # the cookie alone
        assert again.status_code == 200
        assert "voidrun_token" not in json.dumps(again.json()["headers"])


def test_headers_upstream(server: ServerProcess, box: str, client: httpx.Client) -> None:
    response = client.get(
        f"/sandboxes/{box}/ports/8001/headers",
        headers={
            "Cookie": "app=1; voidrun_token=x; voidrun_session=dashboard-session",
            "X-CSRF-Token": "dashboard-csrf",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "hop",
            "X-Forwarded-For": "198.51.100.7",
            "X-Kept": "kept",
        },
    )
    assert response.status_code == 200, response.text
    headers = dict(response.json()["headers"])
    assert headers["host"] == "localhost:8001"
    assert "x-api-key" not in headers and "x-hop" not in headers
    assert headers["cookie"] == "app=1"  # neither the traffic token nor the dashboard session
    assert "x-csrf-token" not in headers
    assert headers["x-kept"] == "kept"
    # uvicorn trusts the loopback peer's X-Forwarded-For: the client is 198.51.100.7 already
    assert headers["x-forwarded-for"] in ("198.51.100.7", "198.51.100.7, 127.0.0.1")
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-prefix"] == f"/api/sandboxes/{box}/ports/8001"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{server.port}"


def test_path_form_pages_are_confined(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    """On the API's origin a sandbox page runs in an opaque origin and its cookies stay below
    its own prefix; the preview host form is left alone (it is its own origin)."""
    by_path = client.get(f"/sandboxes/{box}/ports/8001/cookie")
    assert by_path.headers["content-security-policy"].startswith("sandbox ")
    assert "allow-same-origin" not in by_path.headers["content-security-policy"]
    cookie = by_path.headers["set-cookie"]
    assert cookie == f"s=1; HttpOnly; Path=/api/sandboxes/{box}/ports/8001/", cookie
    by_host = httpx.get(
        f"{server.url}/cookie", headers={"Host": host_of(box, 8001), "X-API-Key": server.api_key}
    )
    assert "content-security-policy" not in by_host.headers
    assert by_host.headers["set-cookie"] == "s=1; Path=/; Domain=127.0.0.1; HttpOnly"


# -- streaming ---------------------------------------------------------------------------------


def test_request_bodies_stream_up_chunked_or_sized(box: str, client: httpx.Client) -> None:
    blob = bytes(range(256)) * 40_000  # 10 MB: above the JSON body limit

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(blob), 65536):
            yield blob[i : i + 65536]

    chunked = client.post(f"/sandboxes/{box}/ports/8001/echo", content=chunks())
    assert chunked.status_code == 200 and chunked.content == blob
    sized = client.post(f"/sandboxes/{box}/ports/8001/echo", content=blob)
    assert sized.status_code == 200 and sized.content == blob


def test_sse_arrives_event_by_event(server: ServerProcess, box: str) -> None:
    """Each event is sent only after the client acknowledged the previous one through the
    proxy: a proxy that buffered would deadlock here."""
    headers = {"X-API-Key": server.api_key}
    with httpx.Client(headers=headers, timeout=30) as http:
        with http.stream("GET", port_url(server, box, 8001, "sse")) as stream:
            assert stream.headers["content-type"] == "text/event-stream"
            seen = []
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    n = int(line.removeprefix("data: "))
                    seen.append(n)
                    assert http.get(port_url(server, box, 8001, f"ack?n={n}")).status_code == 200
            assert seen == [0, 1, 2]


def test_large_download_is_byte_identical(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    expected = exec_out(client, box, "sha256sum /root/big.bin").split()[0]
    digest = hashlib.sha256()
    size = 0
    with client.stream("GET", f"/sandboxes/{box}/ports/8000/big.bin", timeout=120) as stream:
        assert stream.status_code == 200
        for chunk in stream.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG_MB * 1024 * 1024
    assert digest.hexdigest() == expected


# -- WebSockets --------------------------------------------------------------------------------


def test_websocket_echo_through_both_forms(server: ServerProcess, box: str) -> None:
    path_url = (
        f"ws://127.0.0.1:{server.port}/api/sandboxes/{box}/ports/8001/ws?apiKey={server.api_key}"
    )
    with connect(path_url) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01binary" * 10_000)
        assert ws.recv(timeout=10) == b"\x00\x01binary" * 10_000
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        host_url = f"ws://{host_of(box, 8001)}:{server.port}/ws"
        with connect(host_url, sock=sock, additional_headers={"X-API-Key": server.api_key}) as ws:
            ws.send("by host")
            assert ws.recv(timeout=10) == "by host"


def test_websocket_to_a_port_nobody_listens_on_is_refused(server: ServerProcess, box: str) -> None:
    from websockets.exceptions import InvalidStatus

    url = f"ws://127.0.0.1:{server.port}/api/sandboxes/{box}/ports/8003/ws?apiKey={server.api_key}"
    with pytest.raises(InvalidStatus) as refused:
        connect(url).close()
    assert refused.value.response.status_code == 502


# -- servers that misbehave --------------------------------------------------------------------


def test_a_server_that_never_answers_is_504(box: str, client: httpx.Client) -> None:
    response = client.get(f"/sandboxes/{box}/ports/8001/hang")
    assert response.status_code == 504, response.text


def test_garbage_is_502(box: str, client: httpx.Client) -> None:
    response = client.get(f"/sandboxes/{box}/ports/8001/garbage")
    assert response.status_code == 502, response.text
    assert client.get(f"/sandboxes/{box}/ports/8001/headers").status_code == 200


def test_a_response_cut_short_is_cut_short_for_the_client(box: str, client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/sandboxes/{box}/ports/8001/truncate")
    assert client.get(f"/sandboxes/{box}/ports/8001/headers").status_code == 200


def wait_closed(client: httpx.Client, box: str, name: str) -> None:
    """Until the server inside saw the proxy close that connection (``closed()`` in
    proxy_apps/upstream.py)."""
    for _ in range(400):
        if exec_out(client, box, f"cat /root/{name}-closed 2>/dev/null") == "closed\n":
            return
        time.sleep(0.05)
    raise AssertionError(f"the server inside never saw its connection ({name}) closed")


def test_a_client_that_leaves_closes_the_upstream_connection(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    exec_out(client, box, "rm -f /root/forever-closed")
    with httpx.Client(headers={"X-API-Key": server.api_key}) as leaving:
        with leaving.stream("GET", port_url(server, box, 8001, "forever")) as stream:
            for i, _chunk in enumerate(stream.iter_raw()):
                if i > 10:
                    break
    wait_closed(client, box, "forever")


def test_a_server_that_stalls_mid_body_is_cut_off(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    """No byte for the idle timeout: the client's response is aborted (never complete-looking)
    and the connection into the sandbox closed."""
    exec_out(client, box, "rm -f /root/stall-closed")
    with httpx.Client(headers={"X-API-Key": server.api_key}, timeout=60) as http:
        with http.stream("GET", port_url(server, box, 8001, "stall")) as stream:
            assert stream.status_code == 200
            received = b""
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in stream.iter_raw():
                    received += chunk
            assert received == b"s" * 1000
    wait_closed(client, box, "stall")


def test_a_trickled_response_head_is_504(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    """Bytes that keep coming do not extend the head's deadline."""
    exec_out(client, box, "rm -f /root/trickle-closed")
    response = client.get(f"/sandboxes/{box}/ports/8001/trickle-head", timeout=60)
    assert response.status_code == 504, response.text
    assert "no response head" in response.json()["details"]
    wait_closed(client, box, "trickle")


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))


def test_a_client_that_stops_reading_holds_no_memory_and_is_cut_off(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    """/forever writes as fast as it can; the client reads nothing. The proxy must not buffer
    it (the server's memory stays flat while the stream is stuck), and after the idle timeout
    the exchange ends: the connection into the sandbox is closed and the client's too."""
    assert server.process is not None
    exec_out(client, box, "rm -f /root/unread-closed")
    with socket.socket() as sock:
        # A 4 KiB receive buffer stalls the stream at once. Segments smaller than it let the
        # receiver announce the room it makes (with loopback's 64 KiB segments it never
        # would, and the drain below would crawl on the sender's zero-window probes).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            f"GET /api/sandboxes/{box}/ports/8001/forever?name=unread HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nX-API-Key: {server.api_key}\r\n\r\n".encode()
        )
        time.sleep(0.5)  # the stream is stuck by now: the socket buffers are full
        before = rss_kib(server.process.pid)
        peak = before
        for _ in range(IDLE * 4):
            time.sleep(0.25)
            peak = max(peak, rss_kib(server.process.pid))
        assert peak - before < 32 * 1024, f"server memory grew {peak - before} KiB"
        wait_closed(client, box, "unread")
        sock.settimeout(30)
        received = 0
        while chunk := sock.recv(1 << 20):  # what was in flight, then the end
            received += len(chunk)
        assert received < 64 * 1024 * 1024


def test_a_stalled_upload_is_408(server: ServerProcess, box: str, client: httpx.Client) -> None:
    exec_out(client, box, "rm -f /root/upload-closed")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"POST /api/sandboxes/{box}/ports/8001/echo?name=upload HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nX-API-Key: {server.api_key}\r\nContent-Length: 1000\r\n"
            "\r\n0123456789".encode()
        )
        sock.settimeout(60)
        answer = b""
        while b"}" not in answer and (chunk := sock.recv(65536)):  # head, then the JSON body
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"no byte of the request body" in answer
    wait_closed(client, box, "upload")


def test_connections_per_sandbox_are_limited(
    server: ServerProcess, box: str, client: httpx.Client
) -> None:
    headers = {"X-API-Key": server.api_key}
    streams = []
    with httpx.Client(headers=headers, timeout=30) as http:
        try:
            for _ in range(6):
                request = http.build_request("GET", port_url(server, box, 8001, "forever"))
                streams.append(http.send(request, stream=True))
            refused = client.get(f"/sandboxes/{box}/ports/8001/headers")
            assert refused.status_code == 429, refused.text
        finally:
            for stream in streams:
                stream.close()
    for _ in range(200):  # the slots come back as the streams end
        if client.get(f"/sandboxes/{box}/ports/8001/headers").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("slots never came back")


# -- ports through PATCH -----------------------------------------------------------------------


def test_patch_ports_applies_at_once(server: ServerProcess, box: str, client: httpx.Client) -> None:
    """Added ports are served, removed ones are 404, ``public`` flips anonymous access: on the
    next request, with the sandbox's row already in the data plane's memory."""
    anonymous = port_url(server, box, 8001, "headers")
    assert client.get(f"/sandboxes/{box}/ports/8001/headers").status_code == 200  # row cached
    assert httpx.get(anonymous).status_code == 401
    assert client.get(f"/sandboxes/{box}/ports/8003/").status_code == 502
    assert client.get(f"/sandboxes/{box}/ports/8004/").status_code == 404
    changed = [
        {"protocol": "http", "port": 8000},
        {"protocol": "http", "port": 8001, "public": True},
        {"protocol": "http", "port": 8002, "public": True},
        {"protocol": "http", "port": 8004},
    ]
    try:
        patched = client.patch(f"/sandboxes/{box}", json={"ports": changed})
        assert patched.status_code == 200, patched.text
        assert [p["port"] for p in patched.json()["data"]["ports"]] == [8000, 8001, 8002, 8004]
        assert httpx.get(anonymous).status_code == 200  # now public
        assert client.get(f"/sandboxes/{box}/ports/8003/").status_code == 404  # removed
        added = client.get(f"/sandboxes/{box}/ports/8004/")
        assert added.status_code == 502, added.text  # declared; nobody listens there
        urls = {u["port"]: u for u in client.get(f"/sandboxes/{box}/public-urls").json()["data"]}
        assert sorted(urls) == [8000, 8001, 8002, 8004] and urls[8001]["public"] is True
        assert (
            client.get(f"/sandboxes/{box}").json()["data"]["ports"]
            == patched.json()["data"]["ports"]
        )
    finally:
        restored = client.patch(f"/sandboxes/{box}", json={"ports": PORTS})
        assert restored.status_code == 200, restored.text
    assert httpx.get(anonymous).status_code == 401  # private again
    assert client.get(f"/sandboxes/{box}/ports/8003/").status_code == 502


def test_patch_ports_is_checked(server: ServerProcess, box: str, client: httpx.Client) -> None:
    http = [{"protocol": "http", "port": p} for p in (8000, 8001, 8002, 8003, 8004)]
    for ports, error in (
        (http, "too many ports"),
        ([{"port": 8000}, {"port": 8000}], "duplicate port 8000"),
        ([{"port": 70000}], "invalid port 70000"),
    ):
        refused = client.patch(f"/sandboxes/{box}", json={"ports": ports})
        assert refused.status_code == 400, refused.text
        assert error in json.dumps(refused.json()), refused.text
    assert client.get(f"/sandboxes/{box}").json()["data"]["ports"] == PORTS
    with server.client(server.new_tenant("proxy-patchers")) as intruder:
        other = intruder.patch(f"/sandboxes/{box}", json={"ports": []})
        assert other.status_code == 404
    assert client.get(f"/sandboxes/{box}").json()["data"]["ports"] == PORTS


# -- lifecycle ---------------------------------------------------------------------------------


def test_a_paused_sandbox_is_woken_by_a_proxied_request(box: str, client: httpx.Client) -> None:
    assert client.post(f"/sandboxes/{box}/pause").status_code == 200
    assert client.get(f"/sandboxes/{box}").json()["data"]["status"] == "paused"
    response = client.get(f"/sandboxes/{box}/ports/8001/headers")
    assert response.status_code == 200, response.text
    assert client.get(f"/sandboxes/{box}").json()["data"]["status"] == "running"
