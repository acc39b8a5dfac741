"""Load with ``wrk`` (C, event-driven: it is not the bottleneck at a few thousand requests/s).

A generated Lua script sets the method, body and headers, counts every response whose status is
not the expected one (or whose body lacks an expected substring) as an error, and prints one
machine-readable line at the end, which :func:`run` parses.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from _harness import cpu_seconds

INSTALL_HINT = (
    "wrk is needed for this benchmark and was not found on PATH.\n"
    "Install it with the system package manager (Debian/Ubuntu: `apt-get install -y wrk`)."
)

_SCRIPT = """
wrk.method = [==[{method}]==]
{body}
{headers}
local expect_status = {status}
local expect_text = [==[{expect}]==]
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= expect_status or (expect_text ~= "" and not string.find(body, expect_text, 1, true))
  then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), b,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # wrong status or body, and socket errors
    cpu_us_per_request: float  # of the measured server process, user + system

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def require() -> str:
    found = shutil.which("wrk")
    if found is None:
        print(INSTALL_HINT, file=sys.stderr)
        raise SystemExit(2)
    return found


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    pid: int,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
    status: int = 200,
    expect: str = "",
) -> Result:
    """``wrk`` against ``url``; ``pid`` is the server whose CPU time per request is reported."""
    wrk = require()
    for text in (method, body or "", expect, *(headers or {}).keys(), *(headers or {}).values()):
        if "]==]" in text:
            raise ValueError("text that would end a Lua long string")
    script = _SCRIPT.format(
        method=method,
        body=f"wrk.body = [==[{body}]==]" if body is not None else "",
        headers="\n".join(f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in (headers or {}).items()),
        status=status,
        expect=expect,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        # One wrk thread: the machine has 2 cores and the server needs them more.
        argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", lua.name, url]
        before = cpu_seconds(pid)
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        used = cpu_seconds(pid) - before
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, duration_us, p50, p90, p99, bad, socket_errors = map(int, line.split()[1:])
    return Result(
        requests=requests,
        seconds=duration_us / 1e6,
        p50_ms=p50 / 1000,
        p90_ms=p90 / 1000,
        p99_ms=p99 / 1000,
        errors=bad + socket_errors,
        cpu_us_per_request=used / max(requests, 1) * 1e6,
    )


HEADER = (
    f"{'what':<44} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'CPU us/req':>10} {'errors':>6}"
)


def line(label: str, connections: int, result: Result) -> str:
    return (
        f"{label:<44} {connections:>5} {result.rate:9.0f} {result.p50_ms:8.3f} "
        f"{result.p99_ms:8.3f} {result.cpu_us_per_request:10.0f} {result.errors:6d}"
    )
