"""Every feature in images a user brings (issue 14): a busybox-only image (static busybox, no
Python, no bash) pulled through the API from a registry on loopback, and a glibc "Debian" image
with bash and a fake old ``python3`` imported from an OCI layout. Exec, exec-stream, background
commands, the files API, watch, archives, shell sessions and PTYs work in both; the PTY and the
sessions use the image's own shell (``bash`` if present, else ``sh``); an image without a shell
gets errors that name what is missing.

The registry is Debian's ``docker-registry`` on 127.0.0.1 (``tests/support/registry.py``); the
server lists it in ``VOIDRUN_IMAGE_INSECURE_REGISTRIES``.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.http import assert_error
from tests.support.images import IMAGES_DIR
from tests.support.oci_layouts import (
    OLD_PYTHON_VERSION,
    D,
    F,
    L,
    Layout,
    Tree,
    busybox_layout,
    busybox_tree,
    debian_old_python_layout,
    write_layout,
)
from tests.support.registry import LocalRegistry, auth_registry, registry
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
__all__ = ["auth_registry", "registry"]  # fixtures

IMAGES = ["busybox", "debian"]


@pytest.fixture(scope="module")
def server(registry: LocalRegistry, auth_registry: LocalRegistry) -> Iterator[ServerProcess]:
    listed = json.dumps([registry.address, auth_registry.address])
    with sandbox_server(VOIDRUN_IMAGE_INSECURE_REGISTRIES=listed) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def wait_built(client: httpx.Client, image_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        image: dict[str, Any] = client.get(f"/images/{image_id}").json()
        if image["status"] != "building":
            return image
        time.sleep(0.05)
    raise AssertionError(f"image {image_id} still building")


def build(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/images", json=body)
    assert response.status_code == 202, response.text
    return wait_built(client, response.json()["id"])


def no_shell_layout(dest: Path) -> Layout:
    """busybox without any shell: ``/bin/busybox`` and a few applets, no ``sh``, no ``bash``."""
    tree: Tree = {
        path: entry
        for path, entry in busybox_tree().items()
        if not isinstance(entry, L) or path.rsplit("/", 1)[-1] in ("ls", "cat", "echo", "sleep")
    }
    tree["/root/hello.txt"] = F("no shell here\n")
    return write_layout(dest, [tree], {"Env": ["PATH=/usr/bin:/bin"]}, "noshell")


def user_layout(dest: Path) -> Layout:
    """busybox whose config says ``User: app`` (uid 1000, also in group ``staff``, gid 50)."""
    tree = busybox_tree()
    tree.update(
        {
            "/etc/passwd": F(
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
            ),
            "/etc/group": F("root:x:0:\napp:x:1000:\nstaff:x:50:app\n"),
            "/home/app": D(0o755, 1000, 1000),
        }
    )
    return write_layout(dest, [tree], {"Env": ["PATH=/usr/bin:/bin"], "User": "app"}, "user")


@pytest.fixture(scope="module")
def layouts(server: ServerProcess) -> dict[str, Layout]:
    imports = server.data_dir / "imports"
    return {
        "busybox": busybox_layout(imports / "busybox"),
        "debian": debian_old_python_layout(imports / "debian"),
        "noshell": no_shell_layout(imports / "noshell"),
        "user": user_layout(imports / "user"),
    }


@pytest.fixture(scope="module")
def images(
    server: ServerProcess, registry: LocalRegistry, layouts: dict[str, Layout]
) -> dict[str, str]:
    """Image references by kind: busybox from the registry, the others from OCI layouts."""
    reference = registry.push(layouts["busybox"], "team/busybox", "1")
    with server.client() as client:
        pulled = build(client, {"name": "reg-busybox", "version": "1", "source": reference,
                                "insecure": True})  # fmt: skip
        assert pulled["status"] == "ready", pulled
        assert pulled["source"] == reference
        for kind in ("debian", "noshell", "user"):
            body = {"name": f"img-{kind}", "version": "1", "path": layouts[kind].source}
            image = build(client, body)
            assert image["status"] == "ready", image
    images = {kind: f"img-{kind}:1" for kind in ("debian", "noshell", "user")}
    return {"busybox": "reg-busybox:1", **images}


@pytest.fixture(scope="module")
def boxes(server: ServerProcess, images: dict[str, str]) -> dict[str, str]:
    with server.client() as client:
        return {
            kind: str(create_sandbox(client, name=f"feat-{kind}", image=image)["id"])
            for kind, image in images.items()
        }


def exec_ok(client: httpx.Client, box: str, command: str, **extra: Any) -> dict[str, Any]:
    response = client.post(f"/sandboxes/{box}/exec", json={"command": command, **extra})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    name, data = "", list[str]()
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "", list[str]()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


# --- registry imports through the API --------------------------------------------------------


def test_registry_image_runs_a_sandbox(
    client: httpx.Client, images: dict[str, str], boxes: dict[str, str]
) -> None:
    image = client.get("/images/name/reg-busybox").json()
    assert image["status"] == "ready" and image["config"]["workingDir"] == "/srv/app"
    out = exec_ok(client, boxes["busybox"], 'echo "$GREETING"; pwd; cat README')
    assert out["stdout"] == "hello from the image\n/srv/app\nbusybox image\n", out
    assert out["exitCode"] == 0


def test_unlisted_registry_is_refused_with_the_policy_message(client: httpx.Client) -> None:
    body = {"name": "unlisted", "source": "127.0.0.1:1/team/busybox:1", "insecure": True}
    response = client.post("/images", json=body)
    if response.status_code == 202:
        image = wait_built(client, response.json()["id"])
        assert image["status"] == "error"
        message = str(image["error"])
    else:
        message = assert_error(response, 400)["error"]
    assert "VOIDRUN_IMAGE_INSECURE_REGISTRIES" in message, message


def test_wrong_password_fails_with_the_registry_message_and_hides_it(
    client: httpx.Client, auth_registry: LocalRegistry, layouts: dict[str, Layout]
) -> None:
    reference = auth_registry.push(layouts["busybox"], "private/busybox", "1")
    wrong = "wrong-" + "p4ss-w0rd-never-shown"
    body = {
        "name": "private-busybox",
        "source": reference,
        "insecure": True,
        "credentials": {"username": "tester", "password": wrong},
    }
    image = build(client, body)
    assert image["status"] == "error", image
    assert "unauthorized" in str(image["error"]).lower(), image["error"]
    with client.stream("GET", f"/images/{image['id']}/logs") as response:
        logs = "".join(response.iter_text())
    for text in (json.dumps(image), logs, client.get("/images").text):
        assert wrong not in text
    assert auth_registry.password is not None
    right = {**body, "credentials": {"username": "tester", "password": auth_registry.password}}
    image = build(client, right)
    assert image["status"] == "ready", image
    shown = client.get(f"/images/{image['id']}").text
    with client.stream("GET", f"/images/{image['id']}/logs") as response:
        logs = "".join(response.iter_text())
    assert auth_registry.password not in shown + logs
    # nothing of either pull is left beside the org's images (no layout, no empty .pulls)
    assert not (IMAGES_DIR / "orgs" / str(image["orgId"]) / ".pulls").exists()


# --- the feature matrix ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", IMAGES)
def test_exec_and_exec_stream(client: httpx.Client, boxes: dict[str, str], kind: str) -> None:
    box = boxes[kind]
    out = exec_ok(client, box, "echo out; echo err >&2; id -u; exit 3")
    assert (out["stdout"], out["stderr"], out["exitCode"]) == ("out\n0\n", "err\n", 3)
    plain = exec_ok(client, box, "echo plain words")  # the direct path (no shell) when it can
    assert plain["stdout"] == "plain words\n"
    assert exec_ok(client, box, "id -u", user="nobody")["stdout"] == "65534\n"  # direct too
    python = exec_ok(client, box, "python3 --version || echo none")
    assert python["stdout"].strip() == (OLD_PYTHON_VERSION if kind == "debian" else "none")
    with client.stream(
        "POST", f"/sandboxes/{box}/exec-stream", json={"command": "echo one; echo two >&2"}
    ) as response:
        assert response.status_code == 200
        events = list(sse(response))
    assert events == [("stdout", "one"), ("stderr", "two"), ("exit", '{"exitCode":0}')]


@pytest.mark.parametrize("kind", IMAGES)
def test_background_commands(client: httpx.Client, boxes: dict[str, str], kind: str) -> None:
    base = f"/sandboxes/{boxes[kind]}/commands"
    run = client.post(f"{base}/run", json={"command": "echo started; sleep 300"})
    assert run.status_code == 200, run.text
    pid = run.json()["pid"]
    listed = {p["pid"]: p for p in client.get(f"{base}/list").json()["processes"]}
    assert listed[pid]["running"] is True
    with client.stream("POST", f"{base}/attach", json={"pid": pid}) as stream:
        assert stream.status_code == 200
        for name, data in sse(stream):
            assert (name, data) == ("stdout", "started")
            killed = client.post(f"{base}/kill", json={"pid": pid})
            assert killed.json() == {"success": True, "message": "Process killed"}
            break
    waited = client.post(f"{base}/wait", json={"pid": pid})
    assert waited.json()["exitCode"] == 137


@pytest.mark.parametrize("kind", IMAGES)
def test_files_api(client: httpx.Client, boxes: dict[str, str], kind: str) -> None:
    base = f"/sandboxes/{boxes[kind]}/files"

    def ok(method: str, op: str, **params: str) -> dict[str, Any]:
        response = client.request(method, f"{base}{op}", params=params)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        assert data["exitCode"] == 0, data
        return data

    up = client.post(f"{base}/upload", params={"path": "/tmp/f/a.txt"}, content=b"payload")
    assert up.status_code == 200, up.text
    assert client.get(f"{base}/download", params={"path": "/tmp/f/a.txt"}).content == b"payload"
    ok("POST", "/mkdir", path="/tmp/f/sub/deep")
    ok("POST", "/move", **{"from": "/tmp/f/a.txt", "to": "/tmp/f/sub/b.txt"})
    stat = json.loads(ok("GET", "/stat", path="/tmp/f/sub/b.txt")["stdout"])
    assert stat["size"] == 7
    listing = client.get(base, params={"path": "/tmp/f/sub"}).json()["data"]["files"]
    assert sorted(f["name"] for f in listing) == ["b.txt", "deep"]
    ok("DELETE", "", path="/tmp/f")
    assert ok("GET", "/stat", path="/tmp") and client.get(base, params={"path": "/tmp"}).json()
    gone = client.request("GET", f"{base}/stat", params={"path": "/tmp/f"}).json()["data"]
    assert gone["exitCode"] != 0


@pytest.mark.parametrize("kind", IMAGES)
@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_archives(client: httpx.Client, boxes: dict[str, str], kind: str, fmt: str) -> None:
    base = f"/sandboxes/{boxes[kind]}/files"
    root = f"/tmp/arch-{fmt}"
    client.post(f"{base}/upload", params={"path": f"{root}/proj/x.txt"}, content=b"x")
    for op, params in (
        ("compress", {"path": f"{root}/proj", "format": fmt}),
        ("extract", {"archive": f"{root}/proj.{fmt}", "dest": f"{root}/out"}),
    ):
        response = client.post(f"{base}/{op}", params=params)
        assert response.json()["data"]["exitCode"] == 0, response.text
    assert client.get(f"{base}/download", params={"path": f"{root}/out/proj/x.txt"}).content == b"x"
    packed = client.get(f"{base}/download", params={"path": f"{root}/proj.{fmt}"}).content
    if fmt == "zip":
        assert "proj/x.txt" in zipfile.ZipFile(io.BytesIO(packed)).namelist()
    else:
        assert "proj/x.txt" in tarfile.open(fileobj=io.BytesIO(packed)).getnames()


@pytest.mark.parametrize("kind", IMAGES)
async def test_watch(server: ServerProcess, boxes: dict[str, str], kind: str) -> None:
    box = boxes[kind]
    base = f"/sandboxes/{box}/files"
    headers = {"X-API-Key": server.api_key}
    async with httpx.AsyncClient(base_url=server.api, headers=headers, timeout=30) as http:
        await http.post(f"{base}/mkdir", params={"path": "/tmp/watched"})
        started = await http.post(f"{base}/watch", json={"path": "/tmp/watched"})
        assert started.status_code == 200, started.text
        session_id = started.json()["data"]["sessionId"]
        url = server.api.replace("http://", "ws://")
        url += f"/sandboxes/{box}/files/watch/{session_id}/stream?apiKey={server.api_key}"
        async with async_connect(url) as ws:
            await http.post(f"{base}/upload", params={"path": "/tmp/watched/new"}, content=b"1")
            with anyio.fail_after(30):
                while True:
                    event = json.loads(await ws.recv())
                    if event["path"] == "/tmp/watched/new":
                        break
    assert event["type"] in ("created", "modified")


def ws_url(server: ServerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}/api{path}?apiKey={server.api_key}"


def read_until(ws: ClientConnection, pattern: str, seen: list[str]) -> str:
    for _ in range(2000):
        text = "".join(seen)
        if re.search(pattern, text):
            return text
        frame = ws.recv(timeout=30)
        seen.append(frame if isinstance(frame, str) else frame.decode())
    raise AssertionError(f"never saw {pattern!r} in {''.join(seen)!r}")


SHELL_OF = {"busybox": "/bin/busybox", "debian": "/usr/bin/bash"}


@pytest.mark.parametrize("kind", IMAGES)
def test_pty_uses_the_image_shell(server: ServerProcess, boxes: dict[str, str], kind: str) -> None:
    seen: list[str] = []
    with connect(ws_url(server, f"/sandboxes/{boxes[kind]}/pty")) as ws:
        ws.send("echo shell=$(readlink /proc/$$/exe) sum=$((6 * 7))\n")
        read_until(ws, rf"shell={SHELL_OF[kind]} sum=42", seen)


@pytest.mark.parametrize("kind", IMAGES)
def test_shell_sessions(client: httpx.Client, boxes: dict[str, str], kind: str) -> None:
    url = f"/sandboxes/{boxes[kind]}/session-exec"
    created = client.post(url, json={"action": "create"}).json()
    sid = created["sessionId"]
    first = client.post(url, json={"action": "exec", "sessionId": sid, "command": "cd /tmp; X=7"})
    assert first.json()["exitCode"] == 0, first.text
    body = {"action": "exec", "sessionId": sid, "command": "echo $X $PWD $(readlink /proc/$$/exe)"}
    second = client.post(url, json=body).json()
    assert second["output"] == f"7 /tmp {SHELL_OF[kind]}\n", second
    assert client.post(url, json={"action": "close", "sessionId": sid}).json()["success"]


# --- an image without a shell -------------------------------------------------------------------


def test_no_shell_errors_name_what_to_install(
    server: ServerProcess, client: httpx.Client, boxes: dict[str, str]
) -> None:
    box = boxes["noshell"]
    # a plain command (program and arguments) needs no shell: it runs directly
    assert exec_ok(client, box, "ls /root")["stdout"] == "hello.txt\n"
    started = client.post(f"/sandboxes/{box}/commands/run", json={"command": "sleep 300"})
    assert started.status_code == 200, started.text
    for command in ("echo hi | cat", "cd /root", "no-such-program"):
        response = client.post(f"/sandboxes/{box}/exec", json={"command": command})
        error = assert_error(response, 400)
        assert "no shell" in error["details"] and "install" in error["details"], error
    run = client.post(f"/sandboxes/{box}/commands/run", json={"command": "sleep 1 && true"})
    assert "no /bin/sh" in assert_error(run, 400)["details"]
    files = client.get(f"/sandboxes/{box}/files/download", params={"path": "/root/hello.txt"})
    assert files.content == b"no shell here\n"  # the files API needs no tool from the image
    session = client.post(f"/sandboxes/{box}/session-exec", json={"action": "create"})
    assert "install bash" in assert_error(session, 400)["error"]
    created = client.post(f"/sandboxes/{box}/pty/sessions", json={})
    assert "sh -l" in str(assert_error(created, 400))
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, f"/sandboxes/{box}/pty")).close()
    assert refused.value.response.status_code == 400
    assert b"install bash" in (refused.value.response.body or b"")


# --- the image's User -------------------------------------------------------------------------


def test_image_user_is_the_default_user(
    server: ServerProcess, client: httpx.Client, boxes: dict[str, str]
) -> None:
    box = boxes["user"]
    out = exec_ok(client, box, "id -u; id -g; id -G; echo $HOME; pwd; touch mine; stat -c %u mine")
    uid, gid, groups, home, cwd, owner = out["stdout"].splitlines()
    assert (uid, gid, sorted(groups.split()), home, cwd, owner) == (
        "1000", "1000", ["1000", "50"], "/home/app", "/home/app", "1000",
    )  # fmt: skip
    as_root = exec_ok(client, box, "id -u; echo $HOME", user="root")
    assert as_root["stdout"] == "0\n/root\n"
    numeric = exec_ok(client, box, "id -u; id -g", user="1234:staff")
    assert numeric["stdout"] == "1234\n50\n"
    with client.stream(
        "POST", f"/sandboxes/{box}/exec-stream", json={"command": "id -un"}
    ) as response:
        assert list(sse(response))[0] == ("stdout", "app")
    unknown = client.post(f"/sandboxes/{box}/exec", json={"command": "id", "user": "nobody2"})
    assert "not in the image's /etc/passwd" in assert_error(unknown, 400)["details"]
    bad = client.post(f"/sandboxes/{box}/exec", json={"command": "id", "user": "a b"})
    assert assert_error(bad, 400)["error"] == "Invalid user"


def test_image_user_runs_commands_sessions_and_terminals(
    server: ServerProcess, client: httpx.Client, boxes: dict[str, str]
) -> None:
    box = boxes["user"]
    run = client.post(f"/sandboxes/{box}/commands/run", json={"command": "id -u > /tmp/bg"})
    assert run.status_code == 200, run.text
    client.post(f"/sandboxes/{box}/commands/wait", json={"pid": run.json()["pid"]})
    assert exec_ok(client, box, "cat /tmp/bg")["stdout"] == "1000\n"
    url = f"/sandboxes/{box}/session-exec"
    sid = client.post(url, json={"action": "create"}).json()["sessionId"]
    done = client.post(url, json={"action": "exec", "sessionId": sid, "command": "id -u"}).json()
    assert done["output"] == "1000\n", done
    root = client.post(url, json={"action": "create", "user": "root"}).json()["sessionId"]
    done = client.post(url, json={"action": "exec", "sessionId": root, "command": "id -u"}).json()
    assert done["output"] == "0\n", done
    seen: list[str] = []
    with connect(ws_url(server, f"/sandboxes/{box}/pty")) as ws:
        ws.send("echo uid=$(id -u)\n")
        read_until(ws, r"uid=1000", seen)
