"""The files API over HTTP and WebSocket: a real server, the namespace driver, real sandboxes.

Everything the agent does happens inside the sandbox's own mount namespace; escape attempts
are checked by looking at the sandbox's file system through the API itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.api.test_accounts import second_org
from tests.support.http import assert_error
from tests.support.memory import reset_peak_rss, vm_kib
from tests.support.sandboxes import (
    create_sandbox,
    sandbox_workdir,  # noqa: F401 - the "workdir" fixture
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def box(server: ServerProcess) -> str:
    with server.client() as client:
        return str(create_sandbox(client, name="files-box")["id"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def api(client: httpx.Client, box: str) -> Files:
    return Files(client, box)


class Files:
    """Thin helpers that assert the envelope shapes the SDK depends on."""

    def __init__(self, client: httpx.Client, box: str) -> None:
        self.client, self.box = client, box
        self.base = f"/sandboxes/{box}/files"

    def run(self, method: str, op: str, **params: Any) -> dict[str, Any]:
        response = self.client.request(method, f"{self.base}{op}", params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert (body["status"], body["message"]) == ("success", "ok")
        data: dict[str, Any] = body["data"]
        assert set(data) == {"stdout", "stderr", "exitCode"}
        assert isinstance(data["exitCode"], int) and not isinstance(data["exitCode"], bool)
        return data

    def ok(self, method: str, op: str, **params: Any) -> str:
        data = self.run(method, op, **params)
        assert data["exitCode"] == 0 and data["stderr"] == "", data
        return str(data["stdout"])

    def upload(self, path: str, content: bytes, **headers: str) -> dict[str, Any]:
        response = self.client.post(
            f"{self.base}/upload", params={"path": path}, content=content, headers=headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert (body["status"], body["message"]) == ("success", "File uploaded")
        return body

    def download(self, path: str) -> httpx.Response:
        return self.client.get(f"{self.base}/download", params={"path": path})

    def read(self, path: str) -> bytes:
        response = self.download(path)
        assert response.status_code == 200, response.text
        return response.content

    def ls(self, path: str) -> list[dict[str, Any]]:
        response = self.client.get(self.base, params={"path": path})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success" and body["data"]["success"] is True
        files: list[dict[str, Any]] = body["data"]["files"]
        return files

    def names(self, path: str) -> list[str]:
        return [f["name"] for f in self.ls(path)]

    def stat(self, path: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.ok("GET", "/stat", path=path))
        return info

    def exists(self, path: str) -> bool:
        return bool(self.run("GET", "/stat", path=path)["exitCode"] == 0)


# -- the SDK's exact request forms (CONTRACT §E.5) -------------------------------------------


def test_sdk_request_forms(client: httpx.Client, api: Files, box: str, workdir: str) -> None:
    sdk = {"User-Agent": "VoidRun-Python-SDK/0.1.0", "Accept": "application/json"}
    response = client.post(
        f"/sandboxes/{box}/files/upload?path={workdir}/a",
        content=b"hello\n",
        headers={**sdk, "Content-Type": "text/plain; charset=utf-8"},
    )
    assert response.status_code == 200 and response.json()["data"] == {
        "path": f"{workdir}/a",
        "size": 6,
    }
    response = client.post(
        f"/sandboxes/{box}/files/create?path={workdir}/c",
        headers={**sdk, "Content-Type": "application/json"},
    )
    assert response.status_code == 200 and response.json()["data"]["exitCode"] == 0
    response = client.get(f"/sandboxes/{box}/files/head-tail?path={workdir}/a&lines=5&head=false")
    assert response.json()["data"]["stdout"] == "hello\n"
    response = client.get(f"/sandboxes/{box}/files/search?path={workdir}&pattern=%2A.txt")
    assert response.status_code == 200 and response.json()["data"]["exitCode"] == 0
    # no body, no type: the error names the missing field
    missing = {"mkdir": "path is", "copy": "from and to", "move": "from and to"}
    missing.update(chmod="path is", compress="path is", extract="archive is")
    for op, what in missing.items():
        response = client.post(f"/sandboxes/{box}/files/{op}", headers=sdk)
        assert assert_error(response, 400) == {"error": f"{what} required"}, op
    assert api.read(f"{workdir}/c") == b""


# -- list, upload, download ---------------------------------------------------------------------

ODD_NAMES = ["plain.txt", "with space.txt", "quo'te\"s.txt", "ünïcødé ✓.txt", "-dash", "a;b&c|d"]


def test_list_shapes_and_odd_names(api: Files, workdir: str) -> None:
    for name in ODD_NAMES:
        api.upload(f"{workdir}/odd/{name}", name.encode())
    api.ok("POST", "/mkdir", path=f"{workdir}/odd/sub dir")
    files = {f["name"]: f for f in api.ls(f"{workdir}/odd")}
    assert sorted(files) == sorted([*ODD_NAMES, "sub dir"])
    for name in ODD_NAMES:
        info = files[name]
        assert info["path"] == f"{workdir}/odd/{name}" and info["size"] == len(name.encode())
        assert info["mode"] == "-rw-r--r--" and info["isDir"] is False
        datetime.fromisoformat(info["modTime"])
        assert api.read(f"{workdir}/odd/{name}") == name.encode()
    assert files["sub dir"]["isDir"] is True and files["sub dir"]["mode"].startswith("d")
    assert api.names(f"{workdir}//odd/../odd/./sub dir") == []


def test_list_errors(api: Files, workdir: str) -> None:
    assert_error(api.client.get(api.base, params={"path": "/nope/none"}), 404)
    api.upload(f"{workdir}/just-a-file", b"x")
    assert_error(api.client.get(api.base, params={"path": f"{workdir}/just-a-file"}), 400)


def test_upload_forms_and_download_headers(api: Files, workdir: str) -> None:
    body = api.upload(f"{workdir}/up/deep/er/empty.bin", b"")
    assert body["data"] == {"path": f"{workdir}/up/deep/er/empty.bin", "size": 0}
    response = api.download(f"{workdir}/up/deep/er/empty.bin")
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == "0"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="empty.bin"'
    blob = bytes(range(256)) * 1000
    api.upload(f"{workdir}/up/ünï code.bin", blob, **{"Content-Type": "application/octet-stream"})
    response = api.download(f"{workdir}/up/ünï code.bin")
    assert response.content == blob and response.headers["content-length"] == str(len(blob))
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert f"filename*=UTF-8''{quote('ünï code.bin')}" in disposition
    response = api.client.post(
        f"{api.base}/upload",
        params={"path": f"{workdir}/up/multi.bin"},
        files={"file": ("x", blob)},
    )
    assert response.status_code == 200 and response.json()["data"]["size"] == len(blob)
    assert api.read(f"{workdir}/up/multi.bin") == blob
    big = api.client.post(
        f"{api.base}/upload",
        params={"path": f"{workdir}/up/too-big"},
        files={"file": ("x", b"0" * (6 * MiB))},
    )
    assert_error(big, 413)
    assert "too-big" not in api.names(f"{workdir}/up")


def test_download_errors_are_json_before_streaming(api: Files, workdir: str) -> None:
    assert_error(api.download(f"{workdir}/missing.bin"), 404)
    api.ok("POST", "/mkdir", path=f"{workdir}/a-dir")
    assert_error(api.download(f"{workdir}/a-dir"), 400)
    assert_error(api.client.get(f"{api.base}/download"), 400)


def test_upload_into_a_directory_or_below_a_file_is_refused(api: Files, workdir: str) -> None:
    api.ok("POST", "/mkdir", path=f"{workdir}/updir")
    response = api.client.post(
        f"{api.base}/upload", params={"path": f"{workdir}/updir"}, content=b"x"
    )
    assert_error(response, 400)
    api.upload(f"{workdir}/upfile", b"x")
    response = api.client.post(
        f"{api.base}/upload", params={"path": f"{workdir}/upfile/child"}, content=b"x"
    )
    assert_error(response, 400)
    assert api.names(f"{workdir}/updir") == []


# -- exec-envelope ops ---------------------------------------------------------------------------


def test_mkdir_create_copy_move_delete(api: Files, workdir: str) -> None:
    api.ok("POST", "/mkdir", path=f"{workdir}/ops/a/b")
    api.ok("POST", "/mkdir", path=f"{workdir}/ops/a/b")  # -p
    api.ok("POST", "/create", path=f"{workdir}/ops/new/empty")
    assert api.read(f"{workdir}/ops/new/empty") == b""
    api.ok("POST", "/create", path=f"{workdir}/ops/q.txt", content="from query")
    assert api.read(f"{workdir}/ops/q.txt") == b"from query"
    response = api.client.post(
        f"{api.base}/create", params={"path": f"{workdir}/ops/j.txt"}, json={"content": "from body"}
    )
    assert response.status_code == 200 and api.read(f"{workdir}/ops/j.txt") == b"from body"
    api.ok("POST", "/create", path=f"{workdir}/ops/j.txt")  # touch keeps the data
    assert api.read(f"{workdir}/ops/j.txt") == b"from body"
    api.ok("POST", "/copy", **{"from": f"{workdir}/ops/j.txt", "to": f"{workdir}/ops/a/b"})
    api.ok("POST", "/copy", **{"from": f"{workdir}/ops/a", "to": f"{workdir}/ops/copy/of/a"})
    assert api.read(f"{workdir}/ops/copy/of/a/b/j.txt") == b"from body"
    api.ok("POST", "/move", **{"from": f"{workdir}/ops/q.txt", "to": f"{workdir}/ops/moved/q2.txt"})
    assert api.read(f"{workdir}/ops/moved/q2.txt") == b"from query" and not api.exists(
        f"{workdir}/ops/q.txt"
    )
    api.ok("DELETE", "", path=f"{workdir}/ops/copy")
    api.ok("DELETE", "", path=f"{workdir}/ops/never/existed")  # rm -f: exit 0
    assert "copy" not in api.names(f"{workdir}/ops")


def test_operation_failures_are_exit_codes_not_http_errors(api: Files, workdir: str) -> None:
    for method, op, params in [
        ("GET", "/stat", {"path": f"{workdir}/nope"}),
        ("GET", "/du", {"path": f"{workdir}/nope"}),
        ("GET", "/head-tail", {"path": f"{workdir}/nope"}),
        ("GET", "/search", {"path": f"{workdir}/nope", "pattern": "x"}),
        ("POST", "/copy", {"from": f"{workdir}/nope", "to": f"{workdir}/x"}),
        ("POST", "/move", {"from": f"{workdir}/nope", "to": f"{workdir}/x"}),
        ("POST", "/chmod", {"path": f"{workdir}/nope", "mode": "644"}),
        ("POST", "/compress", {"path": f"{workdir}/nope"}),
        ("POST", "/extract", {"archive": f"{workdir}/nope.zip"}),
    ]:
        data = api.run(method, op, **params)
        assert data["exitCode"] != 0 and f"{workdir}/nope" in data["stderr"], (op, data)
        assert "No such file or directory" in data["stderr"] and data["stdout"] == ""
    api.upload(f"{workdir}/plain-file", b"x")
    data = api.run("POST", "/mkdir", path=f"{workdir}/plain-file")
    assert data["exitCode"] == 1 and data["stderr"].startswith("mkdir: ")


def test_paths_default_to_root_and_root_itself_is_never_deleted(api: Files) -> None:
    """Not shared with ``tests/inprocess``: there "/" and "/root" are the host's."""
    api.upload("/root/default-dir/match-at-root.txt", b"")
    assert any(f["name"] == "default-dir" for f in api.client.get(api.base).json()["data"]["files"])
    assert "/root/default-dir/match-at-root.txt" in api.ok("GET", "/search", pattern="match-at")
    data = api.run("DELETE", "", path="/")
    assert data["exitCode"] == 1 and "dangerous" in data["stderr"]


def test_chmod_and_stat(api: Files, workdir: str) -> None:
    api.upload(f"{workdir}/modes/script.sh", b"#!/bin/sh\n")
    api.ok("POST", "/chmod", path=f"{workdir}/modes/script.sh", mode="755")
    info = api.stat(f"{workdir}/modes/script.sh")
    assert info == {
        "path": f"{workdir}/modes/script.sh",
        "size": 10,
        "mode": f"{stat.S_IFREG | 0o755:x}",
        "mtime": info["mtime"],
        "type": "regular file",
    }
    assert isinstance(info["mtime"], int) and abs(info["mtime"] - time.time()) < 24 * 3600
    api.ok("POST", "/chmod", path=f"{workdir}/modes/script.sh", mode="0644")
    assert api.stat(f"{workdir}/modes/script.sh")["mode"] == "81a4"
    assert [f["mode"] for f in api.ls(f"{workdir}/modes")] == ["-rw-r--r--"]
    assert api.stat(f"{workdir}/modes")["type"] == "directory"
    for bad in ("", "9", "75", "12345", "abc", "0o755", "-755"):
        assert_error(api.client.post(f"{api.base}/chmod", params={"path": "/x", "mode": bad}), 400)


def test_du_head_tail_and_search(api: Files, workdir: str) -> None:
    api.upload(f"{workdir}/q/lines.txt", "".join(f"line {i}\n" for i in range(1, 21)).encode())
    api.upload(f"{workdir}/q/sub/match-1.log", b"")
    api.upload(f"{workdir}/q/sub/deeper/match-2.log", b"")
    du = api.ok("GET", "/du", path=f"{workdir}/q")
    size, path = du.rstrip("\n").split("\t")
    assert path == f"{workdir}/q" and size[-1] in "KM" and du.endswith("\n")
    assert api.ok("GET", "/head-tail", path=f"{workdir}/q/lines.txt") == "".join(
        f"line {i}\n" for i in range(1, 11)
    )
    tail = api.ok("GET", "/head-tail", path=f"{workdir}/q/lines.txt", lines="3", head="false")
    assert tail == "line 18\nline 19\nline 20\n"
    assert api.ok("GET", "/head-tail", path=f"{workdir}/q/lines.txt", lines="0") == "line 1\n"
    assert api.ok("GET", "/head-tail", path=f"{workdir}/q/lines.txt", lines="x", head="True") == (
        "".join(f"line {i}\n" for i in range(11, 21))  # only literal "true" means head
    )
    found = api.ok("GET", "/search", path=f"{workdir}/q", pattern="match").splitlines()
    assert found == [f"{workdir}/q/sub/match-1.log", f"{workdir}/q/sub/deeper/match-2.log"]
    assert api.ok("GET", "/search", path=f"{workdir}/q", pattern="*.log").count("\n") == 2
    assert_error(api.client.get(f"{api.base}/search", params={"path": f"{workdir}"}), 400)
    assert_error(
        api.client.get(f"{api.base}/search", params={"path": f"{workdir}", "pattern": "x" * 1025}),
        400,
    )


# -- archives --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.bz2", "zip"])
def test_archive_round_trip(api: Files, fmt: str, workdir: str) -> None:
    root = f"{workdir}/arch-{fmt}"
    api.upload(f"{root}/proj/ünï code.txt", b"unicode")
    api.upload(f"{root}/proj/sub/empty", b"")
    api.upload(f"{root}/proj/run.sh", b"#!/bin/sh\n")
    api.ok("POST", "/chmod", path=f"{root}/proj/run.sh", mode="755")
    params = {"path": f"{root}/proj"} | ({} if fmt == "tar.gz" else {"format": fmt})
    api.ok("POST", "/compress", **params)
    assert f"proj.{fmt}" in api.names(root)
    api.ok("POST", "/extract", archive=f"{root}/proj.{fmt}", dest=f"{root}/out")
    assert api.read(f"{root}/out/proj/ünï code.txt") == b"unicode"
    assert api.read(f"{root}/out/proj/sub/empty") == b""
    assert api.stat(f"{root}/out/proj/run.sh")["mode"] == "81ed"
    api.ok("DELETE", "", path=f"{root}/proj")
    api.ok("POST", "/extract", archive=f"{root}/proj.{fmt}")  # dest: the archive's directory
    assert api.read(f"{root}/proj/ünï code.txt") == b"unicode"
    local = api.read(f"{root}/proj.{fmt}")  # what the sandbox wrote is a real archive
    if fmt == "zip":
        assert "proj/ünï code.txt" in zipfile.ZipFile(io.BytesIO(local)).namelist()
    else:
        assert "proj/ünï code.txt" in tarfile.open(fileobj=io.BytesIO(local)).getnames()


def test_archive_request_errors(api: Files, workdir: str) -> None:
    compress = api.client.post(
        f"{api.base}/compress", params={"path": f"{workdir}", "format": "rar"}
    )
    assert_error(compress, 400)
    extract = api.client.post(f"{api.base}/extract", params={"archive": f"{workdir}/file.rar"})
    assert_error(extract, 400)
    api.upload(f"{workdir}/junk.tgz", b"this is not gzip")
    data = api.run("POST", "/extract", archive=f"{workdir}/junk.tgz", dest=f"{workdir}/junk-out")
    assert data["exitCode"] == 1 and "not a valid tar archive" in data["stderr"]


def evil_tar(entries: list[tuple[str, str, str]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value.encode()))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)
    return buf.getvalue()


def evil_zip(names: list[str], links: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", "ok")
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), "pwned")
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def evil_archives(root: str) -> dict[str, bytes]:
    """Archives whose entries aim outside where they are extracted (``{root}/evil/x/y``)."""
    return {
        "tar-absolute.tar.gz": evil_tar([(f"{root}/pwned-abs", "file", "x")]),
        "tar-dotdot.tar.gz": evil_tar([("../../pwned-dotdot", "file", "x")]),
        "tar-symlink-out.tar": evil_tar([("l", "sym", "../.."), ("l/pwned-sym", "file", "x")], "w"),
        "tar-symlink-abs.tar.bz2": evil_tar(
            [("l", "sym", root), ("l/pwned", "file", "x")], "w:bz2"
        ),
        "tar-dot-link-chain.tgz": evil_tar(
            [("d", "sym", "."), ("e", "sym", "d/../../.."), ("e/pwned-chain", "file", "x")]
        ),
        "tar-hardlink-out.tar.gz": evil_tar([("h", "hard", "../../../victim")]),
        "tar-hardlink-abs.tar.gz": evil_tar([("h", "hard", f"{root}/victim")]),
        "zip-slip.zip": evil_zip(
            ["../../pwned-zip", f"{root}/pwned-zip-abs", "a/../../../pwned-z"], {}
        ),
        "zip-symlink.zip": evil_zip(["l/pwned-zip-sym"], {"l": root}),
    }


@pytest.mark.parametrize("name", sorted(evil_archives("/root")))
def test_malicious_archives_cannot_escape(api: Files, name: str, workdir: str) -> None:
    evil = f"{workdir}/evil"
    api.upload(f"{workdir}/victim", b"victim")
    api.upload(f"{evil}/{name}", evil_archives(workdir)[name])
    before = sorted(api.names(workdir))
    data = api.run("POST", "/extract", archive=f"{evil}/{name}", dest=f"{evil}/x/y")
    assert data["exitCode"] == 2 and "refused" in data["stderr"], data
    assert sorted(api.names(workdir)) == before and api.read(f"{workdir}/victim") == b"victim"
    assert not [n for n in api.names(evil) if n.startswith("pwned")]
    found = api.ok("GET", "/search", path=workdir, pattern="pwned")
    assert all(p.startswith(f"{evil}/x/y/") for p in found.splitlines()), found
    for info in api.ls(f"{evil}/x/y"):
        if info["mode"].startswith("l"):
            link = api.stat(info["path"])
            assert link["type"] == "symbolic link"


# -- bad input, tenancy ---------------------------------------------------------------------------

BAD_REQUESTS = [
    ("GET", "", {"path": "/tmp/\x00x"}),
    ("GET", "", {"path": "/" + "a" * 4096}),
    ("DELETE", "", {}),
    ("POST", "/upload", {}),
    ("POST", "/upload", {"path": "/"}),
    ("GET", "/download", {"path": "a\x00"}),
    ("GET", "/head-tail", {}),
    ("GET", "/search", {"pattern": ""}),
    ("POST", "/mkdir", {}),
    ("POST", "/create", {}),
    ("POST", "/copy", {"from": "/a"}),
    ("POST", "/move", {"to": "/a"}),
    ("POST", "/chmod", {"path": "/a"}),
    ("GET", "/stat", {}),
    ("POST", "/compress", {}),
    ("POST", "/compress", {"path": "/a", "format": "7z"}),
    ("POST", "/extract", {}),
    ("POST", "/extract", {"archive": "/a.rar"}),
]


@pytest.mark.parametrize(("method", "op", "params"), BAD_REQUESTS)
def test_bad_input_is_400(api: Files, method: str, op: str, params: dict[str, str]) -> None:
    assert_error(api.client.request(method, f"{api.base}{op}", params=params), 400)


def test_bad_bodies_are_400(api: Files) -> None:
    for body in (b"{not json", b"[1,2]x", b'{"content": 5}'):
        response = api.client.post(
            f"{api.base}/create",
            params={"path": "/tmp/x"},
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert_error(response, 400)
    for watch in ({}, {"path": ""}, {"path": 5}, {"recursive": True}):
        assert_error(api.client.post(f"{api.base}/watch", json=watch), 400)
    assert_error(api.client.post(f"{api.base}/watch", content=b"nope"), 400)
    response = api.client.post(
        f"{api.base}/upload",
        params={"path": "/tmp/m"},
        content=b"--x\r\n\r\nno field\r\n--x--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert_error(response, 400)


def test_other_orgs_and_unknown_sandboxes_get_404(server: ServerProcess, box: str) -> None:
    other = second_org(server, "files-other")
    with server.client(other) as client:
        for method, op, params in [
            ("GET", "", {"path": "/root"}),
            ("DELETE", "", {"path": "/root/x"}),
            ("POST", "/upload", {"path": "/root/x"}),
            ("GET", "/download", {"path": "/tmp/a"}),
            ("GET", "/stat", {"path": "/"}),
            ("POST", "/extract", {"archive": "/a.zip"}),
        ]:
            for target in (box, "0" * 24, "not-an-id"):
                response = client.request(
                    method, f"/sandboxes/{target}/files{op}", params=params, content=b"x"
                )
                assert_error(response, 404)
        assert_error(client.post(f"/sandboxes/{box}/files/watch", json={"path": "/"}), 404)


# -- large transfers, quota ------------------------------------------------------------------------


def test_200mb_round_trip_streams(server: ServerProcess, client: httpx.Client) -> None:
    box = str(create_sandbox(client, name="big-files")["id"])
    base = f"/sandboxes/{box}/files"
    assert server.process is not None
    pid = server.process.pid
    client.get(f"{base}", params={"path": "/"})  # warm: agent connection, code paths
    start_rss = reset_peak_rss(pid)
    size, chunk = 200 * MiB, 1 * MiB
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        block = hashlib.sha256(b"seed").digest() * (chunk // 32)
        for i in range(size // chunk):
            piece = i.to_bytes(4, "big") + block[4:]
            sent.update(piece)
            yield piece

    began = time.perf_counter()
    response = client.post(
        f"{base}/upload", params={"path": "/root/big.bin"}, content=body(), timeout=600
    )
    upload_s = time.perf_counter() - began
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"path": "/root/big.bin", "size": size}
    received = hashlib.sha256()
    began = time.perf_counter()
    with client.stream("GET", f"{base}/download", params={"path": "/root/big.bin"}) as stream:
        assert stream.headers["content-length"] == str(size)
        for piece in stream.iter_bytes():
            received.update(piece)
    download_s = time.perf_counter() - began
    assert received.hexdigest() == sent.hexdigest()
    growth_mib = (vm_kib(pid, "VmHWM") - start_rss) / 1024
    print(
        f"\n200 MiB: upload {200 / upload_s:.0f} MiB/s, download {200 / download_s:.0f} MiB/s,"
        f" server peak RSS +{growth_mib:.1f} MiB"
    )
    assert growth_mib < 150
    client.delete(f"/sandboxes/{box}")


def test_full_disk_upload_is_507_and_leaves_nothing(client: httpx.Client) -> None:
    box = str(create_sandbox(client, name="full-disk")["id"])  # 256 MiB disk (sandbox_server)
    base = f"/sandboxes/{box}/files"

    def body() -> Iterator[bytes]:
        for _ in range(400):
            yield b"\xab" * MiB

    response = client.post(
        f"{base}/upload", params={"path": "/root/fill/huge.bin"}, content=body(), timeout=600
    )
    error = assert_error(response, 507)
    assert "No space left" in error.get("details", "")
    listing = client.get(base, params={"path": "/root/fill"}).json()["data"]["files"]
    assert listing == []  # neither the target nor a temp file
    ok = client.post(f"{base}/upload", params={"path": "/root/after"}, content=b"fits")
    assert ok.status_code == 200
    client.delete(f"/sandboxes/{box}")


# -- watch -----------------------------------------------------------------------------------------


def ws_url(server: ServerProcess, box: str, session_id: str, key: str | None = None) -> str:
    base = server.api.replace("http://", "ws://")
    return f"{base}/sandboxes/{box}/files/watch/{session_id}/stream?apiKey={key or server.api_key}"


def checked_session(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert (envelope["status"], envelope["message"]) == ("success", "watch started")
    session_id = str(envelope["data"]["sessionId"])
    assert uuid.UUID(session_id).version == 4
    return session_id


def async_client(server: ServerProcess, key: str | None = None) -> httpx.AsyncClient:
    headers = {"X-API-Key": key or server.api_key}
    return httpx.AsyncClient(base_url=server.api, headers=headers, timeout=30)


async def events_until(ws: Any, done: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not done(seen):
        with anyio.fail_after(30):
            frame = await ws.recv()
        assert isinstance(frame, str)  # text frames, one JSON FileEvent each
        event = json.loads(frame)
        assert set(event) <= {"type", "path", "oldPath", "size", "timestamp"}
        datetime.fromisoformat(event["timestamp"])
        seen.append(event)
    return seen


def seen_event(seen: list[dict[str, Any]], kind: str, path: str, **extra: Any) -> bool:
    return any(
        e["type"] == kind and e["path"] == path and all(e.get(k) == v for k, v in extra.items())
        for e in seen
    )


async def test_watch_reports_nested_changes(server: ServerProcess, box: str) -> None:
    root, base = "/root/watched", f"/sandboxes/{box}/files"
    async with async_client(server) as http:

        async def ok(op: str, **params: str) -> None:
            response = await http.post(f"{base}/{op}", params=params)
            assert response.status_code == 200 and response.json()["data"]["exitCode"] == 0

        await ok("mkdir", path=root)
        await http.post(f"{base}/upload", params={"path": "/root/other.txt"}, content=b"two!")
        response = await http.post(
            f"{base}/watch", json={"path": root, "recursive": True, "ignoreHidden": True}
        )
        session_id = checked_session(response)
        async with connect(ws_url(server, box, session_id)) as ws:
            await ok("mkdir", path=f"{root}/a/b")
            # a new directory is watched once its "created" event is out (see agent/watch.py)
            seen = await events_until(ws, lambda s: seen_event(s, "created", f"{root}/a/b"))
            await http.post(f"{base}/upload", params={"path": f"{root}/a/b/f.txt"}, content=b"1")
            await ok("copy", **{"from": "/root/other.txt", "to": f"{root}/a/b/f.txt"})
            await ok("move", **{"from": f"{root}/a/b/f.txt", "to": f"{root}/a/b/g.txt"})
            await ok("chmod", path=f"{root}/a/b/g.txt", mode="600")
            await ok("create", path=f"{root}/.hidden")
            await ws.send("ignored by the server")
            response = await http.delete(base, params={"path": f"{root}/a"})
            assert response.status_code == 200
            seen += await events_until(ws, lambda s: seen_event(s, "deleted", f"{root}/a"))
    assert seen_event(seen, "created", f"{root}/a")
    assert seen_event(seen, "created", f"{root}/a/b")
    assert seen_event(seen, "created", f"{root}/a/b/f.txt", size=1)
    assert seen_event(seen, "modified", f"{root}/a/b/f.txt")
    assert seen_event(seen, "renamed", f"{root}/a/b/g.txt", oldPath=f"{root}/a/b/f.txt")
    assert seen_event(seen, "chmod", f"{root}/a/b/g.txt")
    assert seen_event(seen, "deleted", f"{root}/a/b/g.txt")
    assert not [e for e in seen if "/." in e["path"] or "/." in e.get("oldPath", "")]


async def test_watch_session_rules(server: ServerProcess, box: str) -> None:
    other = second_org(server, "watch-other")
    async with async_client(server) as http:
        response = await http.post(f"/sandboxes/{box}/files/watch", json={"path": "/root/nope"})
        assert_error(response, 404)
        response = await http.post(f"/sandboxes/{box}/files/watch", json={"path": "/tmp"})
        session_id = response.json()["data"]["sessionId"]
    for url, status in [
        (ws_url(server, box, str(uuid.uuid4())), 404),  # unknown session
        (ws_url(server, box, session_id, key=other), 404),  # another org's session
        (ws_url(server, "0" * 24, session_id), 404),  # another sandbox
        (ws_url(server, box, session_id, key="vr_wrong"), 401),
    ]:
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == status
    async with connect(ws_url(server, box, session_id)) as ws:  # the rejections did not use it
        await ws.close()
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(server, box, session_id)):  # single use
            pass
    assert info.value.response.status_code == 404


async def test_stopping_the_sandbox_ends_the_stream(server: ServerProcess) -> None:
    async with async_client(server) as http:
        response = await http.post("/sandboxes", json={"name": "watch-stop"})
        box = response.json()["data"]["id"]
        for _ in range(2):  # a client that leaves cancels its watch; the next one works
            response = await http.post(f"/sandboxes/{box}/files/watch", json={"path": "/tmp"})
            async with connect(ws_url(server, box, response.json()["data"]["sessionId"])) as ws:
                await http.post(f"/sandboxes/{box}/files/create", params={"path": "/tmp/x"})
                seen = await events_until(ws, lambda s: bool(s))
                assert seen[0]["path"] == "/tmp/x"
        response = await http.post(f"/sandboxes/{box}/files/watch", json={"path": "/tmp"})
        async with connect(ws_url(server, box, response.json()["data"]["sessionId"])) as ws:
            assert (await http.post(f"/sandboxes/{box}/stop")).status_code == 200
            with pytest.raises(ConnectionClosed) as closed:
                with anyio.fail_after(30):
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        await http.delete(f"/sandboxes/{box}")


async def test_a_client_that_does_not_read_cannot_grow_server_memory(
    server: ServerProcess, box: str
) -> None:
    """A flood of events towards a stalled client: backpressure, then the kernel drops."""
    assert server.process is not None
    pid, base = server.process.pid, f"/sandboxes/{box}/files"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(10_000):  # ~30 000 events: more than the kernel queues (16 384)
            zf.writestr(f"f{i:05d}-{'x' * 40}", b"")
    async with async_client(server) as http:
        await http.post(f"{base}/upload", params={"path": "/tmp/flood.zip"}, content=buf.getvalue())
        await http.post(f"{base}/mkdir", params={"path": "/tmp/flood"})
        response = await http.post(f"{base}/watch", json={"path": "/tmp/flood"})
        session_id = checked_session(response)
        start_rss = reset_peak_rss(pid)
        # max_queue=1: the client stops reading; close_timeout: it never reads the close frame
        async with connect(ws_url(server, box, session_id), max_queue=1, close_timeout=1) as ws:
            response = await http.post(
                f"{base}/extract", params={"archive": "/tmp/flood.zip", "dest": "/tmp/flood"}
            )
            assert response.json()["data"]["exitCode"] == 0
            first = await events_until(ws, lambda s: len(s) >= 100)
            assert first[0]["type"] in ("created", "modified", "chmod")
        assert (vm_kib(pid, "VmHWM") - start_rss) / 1024 < 50
        response = await http.post(f"{base}/watch", json={"path": "/tmp/flood"})
        async with connect(ws_url(server, box, checked_session(response))) as ws:
            await http.post(f"{base}/create", params={"path": "/tmp/flood/after"})
            seen = await events_until(ws, lambda s: seen_event(s, "created", "/tmp/flood/after"))
            assert seen
