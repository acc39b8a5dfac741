"""The pure parts of ``voidrun-server sandboxes``: default URL, WebSocket URL, key lookup, SSE
parsing, ages and error messages (the commands themselves: tests/api/test_cli_sandboxes.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from voidrun_server.cli.client import (
    ApiError,
    Target,
    default_url,
    refusal,
    resolve_key,
)
from voidrun_server.cli.sandboxes import age
from voidrun_server.cli.streaming import events
from voidrun_server.config import Settings


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9000/api"),
        ("0.0.0.0", "http://127.0.0.1:9000/api"),
        ("::", "http://[::1]:9000/api"),
        ("fd00::5", "http://[fd00::5]:9000/api"),
        ("box.internal", "http://box.internal:9000/api"),
    ],
)
def test_default_url(tmp_path: Path, host: str, url: str) -> None:
    assert default_url(Settings(data_dir=tmp_path, host=host, port=9000)) == url


def test_websocket_url_carries_the_key_escaped() -> None:
    target = Target("https://h:1/api", "vr_a+b/c", "--api-key")
    assert target.ws_url("/sandboxes/x/pty") == "wss://h:1/api/sandboxes/x/pty?apiKey=vr_a%2Bb%2Fc"
    assert Target("http://h/api", "k", "").ws_url("/p") == "ws://h/api/p?apiKey=k"


def test_key_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOIDRUN_API_KEY", raising=False)
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(ApiError, match="No API key.*VOIDRUN_API_KEY"):
        resolve_key(None, settings)
    settings.bootstrap_key_file.write_text("vr_fromfile\n")
    assert resolve_key(None, settings) == ("vr_fromfile", str(settings.bootstrap_key_file))
    assert resolve_key("vr_given", settings) == ("vr_given", "--api-key")
    monkeypatch.setenv("VOIDRUN_API_KEY", "vr_env")
    assert resolve_key("vr_env", settings) == ("vr_env", "VOIDRUN_API_KEY")


def test_sse_events_as_the_server_frames_them() -> None:
    lines = [
        "event: stdout",
        "data: one",
        "",
        ": a comment",
        "event: stderr",
        "data:  two spaces",
        "data: and a second line",
        "",
        "event: exit",
        'data: {"exitCode":3}',
        "",
    ]
    assert list(events(lines)) == [
        ("stdout", "one"),
        ("stderr", " two spaces\nand a second line"),
        ("exit", '{"exitCode":3}'),
    ]
    assert list(events(["data: unterminated"])) == [("message", "unterminated")]


def test_ages() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert age("2026-01-02T03:04:00Z", now) == "5s"
    assert age("2026-01-02T02:59:05+00:00", now) == "5m"
    assert age("2026-01-01T23:04:05", now) == "4h"
    assert age("2025-12-30T03:04:04.123456Z", now) == "3d"
    assert age("2026-01-03T00:00:00Z", now) == "0s"  # a clock ahead of ours
    assert age(None, now) == age("yesterday", now) == "?"


def test_refusals_say_what_to_do() -> None:
    target = Target("http://h/api", "k", "VOIDRUN_API_KEY")
    bad_key = str(refusal(target, 401, '{"error":"invalid or inactive API key"}'))
    assert "from VOIDRUN_API_KEY" in bad_key and "voidrun-server keys create" in bad_key
    unknown = str(refusal(target, 404, '{"error":"Sandbox not found"}', "abc"))
    assert unknown.startswith("No sandbox abc") and "sandboxes list" in unknown
    wrong_url = str(refusal(target, 404, '{"error":"Not Found"}', "abc"))
    assert "is --url the API's base" in wrong_url
    other = str(refusal(target, 503, '{"error":"Sandboxes unavailable","details":"no bwrap"}'))
    assert other == "The server answered 503: Sandboxes unavailable: no bwrap"
    assert "<html>" in str(refusal(target, 502, "<html>bad gateway</html>"))
