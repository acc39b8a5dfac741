"""The gateway's pure decisions: templates, states, paths, watch events, access tokens."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

from voidrun_server.errors import InvalidInputError
from voidrun_server.services import e2b
from voidrun_server.services.e2b_files import Event, events_of, home_of, resolve
from voidrun_server.services.e2b_processes import PTY_PIDS, ProcessTable, Spawned
from voidrun_server.services.traffic_tokens import ENVD_PURPOSE, TrafficTokens


def test_templates_map_to_images() -> None:
    assert e2b.image_for("base", "code") == "code"
    assert e2b.image_for("code-interpreter-v1", "code") == "code"
    assert e2b.image_for("python:3.12", "code") == "python:3.12"


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("running", "running"),
        ("paused", "paused"),
        ("stopped", "paused"),
        ("deleted", None),
        ("killed", None),
        ("error", None),
        ("bogus", None),
    ],
)
def test_states(status: str, state: str | None) -> None:
    assert e2b.state_of(SimpleNamespace(status=status)) == state  # type: ignore[arg-type]


def test_timeouts() -> None:
    assert e2b.timeout_seconds(None) == e2b.DEFAULT_TIMEOUT
    assert e2b.timeout_seconds(5) == 5
    for bad in (0, -1, e2b.MAX_TIMEOUT + 1):
        with pytest.raises(InvalidInputError):
            e2b.timeout_seconds(bad)


def test_paths_are_absolute_from_the_home() -> None:
    assert home_of(None) == home_of("root") == home_of("0") == "/root"
    assert home_of("user") == home_of("user:staff") == "/home/user"
    assert resolve("a/../b.txt", "user") == "/home/user/b.txt"
    assert resolve("../../../etc/passwd", "user") == "/etc/passwd"  # inside the sandbox
    assert resolve("/tmp//x/", None) == "/tmp/x"
    for bad in ("", "a\x00b"):
        with pytest.raises(InvalidInputError):
            resolve(bad, None)


def test_watch_events_are_relative_and_renames_split() -> None:
    root = "/tmp/w"
    assert events_of(root, {"type": "created", "path": "/tmp/w/a"}) == [Event("a", "create")]
    assert events_of(root, {"type": "modified", "path": "/tmp/w/d/b"}) == [Event("d/b", "write")]
    assert events_of(root, {"type": "renamed", "path": "/tmp/w/new", "oldPath": "/tmp/w/old"}) == [
        Event("old", "rename"),
        Event("new", "create"),
    ]
    assert events_of(root, {"type": "unknown", "path": "/tmp/w/a"}) == []
    assert events_of(root, {"type": "deleted"}) == []


def test_access_tokens_are_per_sandbox_and_purpose() -> None:
    tokens = TrafficTokens(secrets.token_bytes(32))
    envd = tokens.token_for("a" * 24, ENVD_PURPOSE)
    preview = tokens.token_for("a" * 24)
    assert envd.startswith("vre_") and preview.startswith("vrt_")
    assert tokens.check("a" * 24, envd, ENVD_PURPOSE)
    assert not tokens.check("a" * 24, preview, ENVD_PURPOSE)  # purposes do not mix
    assert not tokens.check("a" * 24, envd)
    assert not tokens.check("b" * 24, envd, ENVD_PURPOSE)  # nor sandboxes
    assert not TrafficTokens(secrets.token_bytes(32)).check("a" * 24, envd, ENVD_PURPOSE)


def test_process_table_pids_tags_and_bounds() -> None:
    table = ProcessTable()
    first = table.pty_pid()
    assert first >= PTY_PIDS and table.pty_pid() == first + 1
    table.add("s", Spawned(7, "/bin/bash", tag="web"))
    table.add("s", Spawned(8, "/bin/bash", tag="web"))
    found = table.by_tag("s", "web")
    assert found is not None and found.pid == 8  # the newest with that tag
    assert table.by_tag("other", "web") is None
    for pid in range(2000):
        table.add("big", Spawned(pid, "x"))
    assert table.get("big", 0) is None and table.get("big", 1999) is not None
