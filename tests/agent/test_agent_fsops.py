"""``fs.*`` ops (list, mutations, queries, archives, watch) through the real client.

The agent runs as a plain subprocess here, so paths are the test's tmp_path; the sandboxed
behaviour (its own ``/``) is covered by tests/api/test_files.py.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.agent.agent_helpers import AgentProcess, names
from voidrun_server.agentclient import AgentClient, AgentOperationError


async def call(client: AgentClient, op: str, **args: Any) -> dict[str, Any]:
    body, _, _ = await client.fs_call(op, args)
    return body


async def refused(client: AgentClient, op: str, **args: Any) -> AgentOperationError:
    with pytest.raises(AgentOperationError) as info:
        await client.fs_call(op, args)
    return info.value


def tree_has(root: Path, name: str) -> bool:
    return any(name in files for _, _, files in os.walk(root))


# -- list, stat, mkdir, touch, chmod, delete --------------------------------------------------


async def test_list_is_sorted_and_uses_lstat(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "b file.txt").write_text("hello")
        (tmp_path / "ä-ünï 'q\"").mkdir()
        (tmp_path / "a-link").symlink_to("b file.txt")
        _, items, _ = await client.fs_call("fs.list", {"path": f"{tmp_path}/./x/.."})
        assert [i["name"] for i in items] == ["a-link", "b file.txt", "ä-ünï 'q\""]
        link, regular, directory = items
        assert stat.S_ISLNK(link["mode"]) and link["path"] == f"{tmp_path}/a-link"
        assert regular["size"] == 5 and stat.S_ISREG(regular["mode"])
        assert stat.S_ISDIR(directory["mode"]) and isinstance(directory["mtime"], float)


async def test_list_of_many_entries_spans_frames(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        for i in range(12_000):  # ~2.5 MB of entries: more than one flow-control window
            (tmp_path / f"{'n' * 100}{i:05d}").touch()
        body, items, _ = await client.fs_call("fs.list", {"path": str(tmp_path)})
        assert body == {"count": 12_000} and len(items) == 12_000
        assert items[-1]["name"] == f"{'n' * 100}11999"


@pytest.mark.parametrize(("setup", "code"), [("missing", "not_found"), ("file", "not_a_directory")])
async def test_list_errors(agent: AgentProcess, tmp_path: Path, setup: str, code: str) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "file").touch()
        error = await refused(client, "fs.list", path=str(tmp_path / setup))
        assert error.code == code and error.message.startswith("ls: ")


async def test_stat_reports_type_mode_and_size(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "f").write_bytes(b"12345")
        (tmp_path / "l").symlink_to("f")
        body = await call(client, "fs.stat", path=str(tmp_path / "f"))
        assert body["type"] == "regular file" and body["size"] == 5
        assert body["mode"] == (tmp_path / "f").stat().st_mode and isinstance(body["mtime"], int)
        assert (await call(client, "fs.stat", path=str(tmp_path / "l")))["type"] == "symbolic link"
        assert (await call(client, "fs.stat", path=str(tmp_path)))["type"] == "directory"
        assert (await refused(client, "fs.stat", path=str(tmp_path / "nope"))).code == "not_found"


async def test_mkdir_touch_chmod(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        deep = tmp_path / "a" / "b" / "c"
        await call(client, "fs.mkdir", path=str(deep))
        await call(client, "fs.mkdir", path=str(deep))  # -p: existing is fine
        assert deep.is_dir()
        (tmp_path / "file").write_text("keep")
        assert (await refused(client, "fs.mkdir", path=str(tmp_path / "file"))).code == "io_error"
        await call(client, "fs.touch", path=str(tmp_path / "file"))
        assert (tmp_path / "file").read_text() == "keep"
        await call(client, "fs.touch", path=str(tmp_path / "new" / "empty"))
        assert (tmp_path / "new" / "empty").read_bytes() == b""
        await call(client, "fs.chmod", path=str(tmp_path / "file"), mode=0o751)
        assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == 0o751
        assert (await refused(client, "fs.chmod", path=str(tmp_path), mode=0o17777)).code == (
            "bad_request"
        )


async def test_delete_is_recursive_and_quiet_when_missing(
    agent: AgentProcess, tmp_path: Path
) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "d" / "e").mkdir(parents=True)
        (tmp_path / "d" / "e" / "f").write_text("x")
        (tmp_path / "target").mkdir()
        (tmp_path / "link").symlink_to("target")
        await call(client, "fs.delete", path=str(tmp_path / "d"))
        await call(client, "fs.delete", path=str(tmp_path / "link"))  # the link, not its target
        await call(client, "fs.delete", path=str(tmp_path / "never-existed"))
        assert names(tmp_path) == ["target"]
        assert (await refused(client, "fs.delete", path="/")).message.startswith("rm: ")
        assert (await refused(client, "fs.delete", path="relative")).code == "bad_request"


# -- copy, move --------------------------------------------------------------------------------


async def test_copy_follows_cp_r(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "x").write_text("x")
        (src / "ln").symlink_to("sub/x")
        (tmp_path / "into").mkdir()
        await call(client, "fs.copy", **{"from": str(src), "to": str(tmp_path / "copy")})
        await call(client, "fs.copy", **{"from": str(src), "to": str(tmp_path / "into")})
        for root in (tmp_path / "copy", tmp_path / "into" / "src"):
            assert (root / "sub" / "x").read_text() == "x"
            assert os.readlink(root / "ln") == "sub/x"
        await call(
            client, "fs.copy", **{"from": str(src / "sub" / "x"), "to": str(tmp_path / "n/y")}
        )
        assert (tmp_path / "n" / "y").read_text() == "x"
        error = await refused(client, "fs.copy", **{"from": str(src), "to": str(src / "sub")})
        assert "into itself" in error.message
        error = await refused(client, "fs.copy", **{"from": str(tmp_path / "no"), "to": "/tmp/z"})
        assert error.code == "not_found" and str(tmp_path / "no") in error.message


async def test_move_renames_and_moves_into_directories(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "a").write_text("a")
        (tmp_path / "dir").mkdir()
        await call(client, "fs.move", **{"from": str(tmp_path / "a"), "to": str(tmp_path / "b/c")})
        await call(client, "fs.move", **{"from": str(tmp_path / "b"), "to": str(tmp_path / "dir")})
        assert (tmp_path / "dir" / "b" / "c").read_text() == "a"
        error = await refused(client, "fs.move", **{"from": str(tmp_path / "a"), "to": "/tmp/x"})
        assert error.code == "not_found"
        error = await refused(
            client, "fs.move", **{"from": str(tmp_path / "dir"), "to": str(tmp_path / "dir/b")}
        )
        assert "subdirectory of itself" in error.message


# -- du, search, head/tail --------------------------------------------------------------------


async def test_du_counts_allocated_bytes_once(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "big").write_bytes(os.urandom(100_000))
        os.link(tmp_path / "big", tmp_path / "again")
        total = (await call(client, "fs.du", path=str(tmp_path)))["bytes"]
        expected = (os.stat(tmp_path).st_blocks + os.stat(tmp_path / "big").st_blocks) * 512
        assert total == expected
        assert (await refused(client, "fs.du", path=str(tmp_path / "nope"))).code == "not_found"


async def test_search_matches_names_of_files_only(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "a.txt").touch()
        (tmp_path / "notes.txt.bak").touch()
        (tmp_path / "dir.txt").mkdir()
        (tmp_path / "dir.txt" / "deep.txt").touch()
        (tmp_path / "link.txt").symlink_to("a.txt")
        body = await call(client, "fs.search", path=str(tmp_path), pattern="*.txt")
        assert body["paths"] == [
            f"{tmp_path}/a.txt",
            f"{tmp_path}/notes.txt.bak",
            f"{tmp_path}/dir.txt/deep.txt",
        ]
        for i in range(150):
            (tmp_path / f"many{i}").touch()
        assert len(
            (await call(client, "fs.search", path=str(tmp_path), pattern="many"))["paths"]
        ) == (100)
        error = await refused(client, "fs.search", path=str(tmp_path / "x"), pattern="a")
        assert error.code == "not_found" and error.message.startswith("find: ")


@pytest.mark.parametrize(
    ("content", "lines", "head", "expected"),
    [
        (b"1\n2\n3\n4\n", 2, True, b"1\n2\n"),
        (b"1\n2\n3\n4\n", 2, False, b"3\n4\n"),
        (b"1\n2\n3\n4", 2, False, b"3\n4"),
        (b"1\n2\n", 10, True, b"1\n2\n"),
        (b"1\n2\n", 10, False, b"1\n2\n"),
        (b"", 3, True, b""),
        (b"", 3, False, b""),
        (b"x" * 70_000 + b"\nend\n", 1, False, b"end\n"),
        (b"a\n" * 50_000, 40_000, True, b"a\n" * 40_000),
        (b"a\n" * 50_000, 40_000, False, b"a\n" * 40_000),
    ],
)
async def test_head_and_tail(
    agent: AgentProcess, tmp_path: Path, content: bytes, lines: int, head: bool, expected: bytes
) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "f").write_bytes(content)
        body, _, out = await client.fs_call(
            "fs.headtail", {"path": str(tmp_path / "f"), "lines": lines, "head": head}
        )
        assert out == expected and body == {"truncated": False}


async def test_head_tail_output_is_bounded(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "f").write_bytes(b"y" * 300_000)
        for head in (True, False):
            args = {"path": str(tmp_path / "f"), "lines": 5, "head": head, "maxBytes": 1000}
            body, _, out = await client.fs_call("fs.headtail", args)
            assert out == b"y" * 1000 and body == {"truncated": True}
        error = await refused(client, "fs.headtail", path=str(tmp_path), lines=1, head=True)
        assert error.code == "is_a_directory"


# -- archives ----------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "ünï code.txt").write_text("unicode")
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("sub/deeper/ünï code.txt")


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.bz2", "zip"])
async def test_compress_extract_round_trip(agent: AgentProcess, tmp_path: Path, fmt: str) -> None:
    async with AgentClient(agent.socket) as client:
        make_tree(tmp_path / "proj")
        body = await call(client, "fs.compress", path=str(tmp_path / "proj"), format=fmt)
        archive = tmp_path / f"proj.{fmt}"
        assert body == {"archive": str(archive)} and archive.is_file()
        assert [n for n in names(tmp_path) if n.endswith(".tmp")] == []
        body = await call(client, "fs.extract", archive=str(archive), dest=str(tmp_path / "out"))
        assert body["problems"] == [] and body["entries"] == 7
        out = tmp_path / "out" / "proj"
        assert (out / "sub" / "deeper" / "ünï code.txt").read_text() == "unicode"
        assert (out / "empty").read_bytes() == b""
        assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o755
        assert os.readlink(out / "link") == "sub/deeper/ünï code.txt"


async def test_compress_and_extract_errors(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        error = await refused(client, "fs.compress", path=str(tmp_path / "nope"), format="zip")
        assert error.code == "not_found"
        assert (await refused(client, "fs.compress", path="/x", format="rar")).code == "bad_request"
        (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all")
        error = await refused(
            client, "fs.extract", archive=str(tmp_path / "junk.tar.gz"), dest="/tmp"
        )
        assert error.code == "io_error" and "not a valid tar archive" in error.message
        error = await refused(client, "fs.extract", archive=str(tmp_path / "a.rar"), dest="/tmp")
        assert error.code == "bad_request"
        error = await refused(client, "fs.extract", archive=str(tmp_path / "a.zip"), dest="/tmp")
        assert error.code == "not_found"


def tar_bytes(entries: Sequence[tuple[str, str, str | bytes]]) -> bytes:
    """(name, kind, content-or-link-target) with kind in file/dir/sym/hard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value if isinstance(value, bytes) else value.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[
                kind
            ]
            info.linkname = str(value)
            tar.addfile(info)
    return buf.getvalue()


EVIL_TARS = {
    "absolute": [("/ESCAPE/abs.txt", "file", "x")],
    "dotdot": [("a/../../ESCAPE/dotdot.txt", "file", "x")],
    "symlink_out": [("ln", "sym", "../ESCAPE"), ("ln/through.txt", "file", "x")],
    "symlink_abs": [("ln", "sym", "/"), ("ln/ESCAPE/abs.txt", "file", "x")],
    "symlink_dot_then_up": [
        ("dot", "sym", "."),
        ("esc", "sym", "dot/../../ESCAPE"),
        ("esc/x.txt", "file", "x"),
    ],
    "symlink_inside_then_write_through": [
        ("sub/", "dir", ""),
        ("in", "sym", "sub"),
        ("in/through.txt", "file", "x"),
    ],
    "hardlink_out": [("hl", "hard", "../ESCAPE/victim")],
    "hardlink_abs": [("hl", "hard", "/etc/passwd")],
}


@pytest.mark.parametrize("case", sorted(EVIL_TARS))
async def test_extract_refuses_every_escape(agent: AgentProcess, tmp_path: Path, case: str) -> None:
    async with AgentClient(agent.socket) as client:
        outside = tmp_path / "ESCAPE"
        outside.mkdir()
        (outside / "victim").write_text("victim")
        archive = tmp_path / "evil.tar"
        archive.write_bytes(tar_bytes(EVIL_TARS[case]))
        dest = tmp_path / "dest"
        body = await call(client, "fs.extract", archive=str(archive), dest=str(dest))
        assert body["problemCount"] >= 1 and all("refused" in p for p in body["problems"]), body
        assert sorted(p.name for p in outside.iterdir()) == ["victim"]
        assert not (dest / "sub" / "through.txt").exists()
        for path in dest.rglob("*"):
            if path.is_symlink():
                assert not os.readlink(path).startswith("/")


async def test_extract_refuses_writing_through_an_existing_symlink(
    agent: AgentProcess, tmp_path: Path
) -> None:
    async with AgentClient(agent.socket) as client:
        (tmp_path / "outside").mkdir()
        dest = tmp_path / "dest"
        dest.mkdir()
        (dest / "pre").symlink_to(tmp_path / "outside")
        archive = tmp_path / "a.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("pre/planted.txt")
            tar.addfile(info, io.BytesIO(b""))
        body = await call(client, "fs.extract", archive=str(archive), dest=str(dest))
        assert body["problemCount"] == 1 and list((tmp_path / "outside").iterdir()) == []


async def test_extract_refuses_links_through_an_existing_outward_symlink(
    agent: AgentProcess, tmp_path: Path
) -> None:
    async with AgentClient(agent.socket) as client:
        dest = tmp_path / "dest"
        dest.mkdir()
        (dest / "out").symlink_to(tmp_path)
        archive = tmp_path / "a.tar"
        archive.write_bytes(tar_bytes([("sub/", "dir", ""), ("sub/l", "sym", "../out/secret")]))
        body = await call(client, "fs.extract", archive=str(archive), dest=str(dest))
        assert body["problemCount"] == 1 and "resolves outside" in body["problems"][0]
        assert not (dest / "sub" / "l").is_symlink()


@pytest.mark.parametrize(
    "name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt", "./../escape.txt"]
)
async def test_zip_slip_is_refused(agent: AgentProcess, tmp_path: Path, name: str) -> None:
    async with AgentClient(agent.socket) as client:
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("fine.txt", "fine")
            zf.writestr(zipfile.ZipInfo(name), "evil")
            link = zipfile.ZipInfo("link")
            link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, "../../etc")
        dest = tmp_path / "d1" / "d2"
        body = await call(client, "fs.extract", archive=str(archive), dest=str(dest))
        assert body["entries"] == 1 and body["problemCount"] == 2
        assert (dest / "fine.txt").read_text() == "fine" and not (dest / "link").exists()
        assert not tree_has(tmp_path, "escape.txt") and not tree_has(Path("/abs"), "escape.txt")


# -- watch -------------------------------------------------------------------------------------


async def collect(events: AsyncIterator[dict[str, Any]], until: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    try:
        with anyio.fail_after(20):
            async for event in events:
                seen.append(event)
                if until(seen):
                    break
    except TimeoutError:
        raise AssertionError(f"the expected event never came; got {seen}") from None
    return seen


def has(seen: list[dict[str, Any]], kind: str, path: Path, **extra: Any) -> bool:
    return any(
        e["type"] == kind
        and e["path"] == str(path)
        and all(e.get(k) == v for k, v in extra.items())
        for e in seen
    )


async def test_watch_reports_nested_changes(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        root = tmp_path / "w"
        (root / "exists").mkdir(parents=True)
        async with client.watch(str(root), recursive=True, ignore_hidden=True) as events:
            nested = root / "exists" / "n1" / "n2"
            nested.mkdir(parents=True)
            # A new directory is watched from the moment its "created" event is out; what
            # happens in it before that is only seen by the scan that follows.
            seen = await collect(events, lambda s: has(s, "created", nested))
            (nested / "f.txt").write_text("hello")
            (root / ".hidden").write_text("h")
            os.rename(nested / "f.txt", nested / "g.txt")
            (nested / "g.txt").chmod(0o600)
            (nested / "g.txt").unlink()
            seen += await collect(events, lambda s: has(s, "deleted", nested / "g.txt"))
        assert has(seen, "created", root / "exists" / "n1")
        assert has(seen, "created", nested / "f.txt") or has(seen, "modified", nested / "f.txt")
        assert has(seen, "renamed", nested / "g.txt", oldPath=str(nested / "f.txt"))
        assert has(seen, "chmod", nested / "g.txt")
        assert not any(".hidden" in e["path"] for e in seen)
        assert all(e["timestamp"].endswith("Z") for e in seen)


async def test_watch_non_recursive_and_moves_across_the_boundary(
    agent: AgentProcess, tmp_path: Path
) -> None:
    async with AgentClient(agent.socket) as client:
        root = tmp_path / "w"
        (root / "sub").mkdir(parents=True)
        (tmp_path / "outside.txt").write_text("o")
        async with client.watch(str(root), recursive=False, ignore_hidden=False) as events:
            (root / "sub" / "ignored.txt").write_text("not watched")
            os.rename(tmp_path / "outside.txt", root / "in.txt")
            os.rename(root / "in.txt", tmp_path / "gone.txt")
            (root / ".shown").write_text("x")
            seen = await collect(events, lambda s: has(s, "created", root / ".shown"))
        assert has(seen, "created", root / "in.txt") and has(seen, "deleted", root / "in.txt")
        assert not any("ignored.txt" in e["path"] for e in seen)


async def test_watch_ends_when_the_root_goes_and_refuses_missing_paths(
    agent: AgentProcess, tmp_path: Path
) -> None:
    async with AgentClient(agent.socket) as client:
        root = tmp_path / "w"
        root.mkdir()
        async with client.watch(str(root), recursive=True, ignore_hidden=True) as events:
            root.rmdir()
            seen = await collect(events, lambda s: False)  # ends by itself
        assert has(seen, "deleted", root)
        with pytest.raises(AgentOperationError) as info:
            async with client.watch(str(tmp_path / "nope"), recursive=False, ignore_hidden=True):
                pass
        assert info.value.code == "not_found"
        await client.ping()
