"""``sandboxes exec``: one request (``POST …/exec``) or the SSE stream (``POST …/exec-stream``,
CONTRACT §B.1), stdout to stdout and stderr to stderr, the exit code returned."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import httpx

from .client import ApiError, Target, checked, refusal, session

SLACK = 30.0  # seconds past the command's own timeout before the client gives up


def exec_once(target: Target, sandbox_id: str, body: dict[str, Any]) -> int:
    with session(target, timeout=float(body["timeout"]) + SLACK) as client:
        answer = checked(
            target, client.post(f"/sandboxes/{sandbox_id}/exec", json=body), sandbox_id
        )
    data = answer.get("data") or {}
    _write(sys.stdout, str(data.get("stdout", "")))
    _write(sys.stderr, str(data.get("stderr", "")))
    for channel in ("stdout", "stderr"):
        if data.get(f"{channel}Truncated"):
            print(f"[{channel} truncated by the server]", file=sys.stderr)
    return int(data.get("exitCode", 0))


def exec_streamed(target: Target, sandbox_id: str, body: dict[str, Any]) -> int:
    path = f"/sandboxes/{sandbox_id}/exec-stream"
    headers = {"Accept": "text/event-stream"}
    timeout = httpx.Timeout(30.0, read=float(body["timeout"]) + SLACK)
    with (
        session(target, timeout=None) as client,
        client.stream("POST", path, json=body, headers=headers, timeout=timeout) as response,
    ):
        if response.is_error:
            raise refusal(target, response.status_code, response.read().decode(), sandbox_id)
        for name, data in events(response.iter_lines()):
            if name in ("stdout", "stderr"):
                _write(sys.stdout if name == "stdout" else sys.stderr, data + "\n")
            elif name == "exit":
                result = json.loads(data)
                if result.get("error"):
                    print(result["error"], file=sys.stderr)
                return int(result["exitCode"])
            elif name == "error":
                raise ApiError(f"The stream failed: {data}")
    raise ApiError("The stream ended before the command's exit (server restarted?).")


def events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each SSE event; several ``data:`` lines are joined with newlines."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield name, "\n".join(data)


def _write(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()
