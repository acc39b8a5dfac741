"""``voidrun-server sandboxes list|exec|shell|kill`` as a user runs them: the real command, in
its own process, against a real server with real sandboxes; ``shell`` on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandboxes import (
    create_sandbox,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import BIN, ServerProcess, free_port

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
MISSING = "0" * 24
BAD_KEY = "vr_" + "x" * 43
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # e.g. bash's bracketed-paste switches


def cli(
    server: ServerProcess, command: str, *args: str, key: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``voidrun-server sandboxes ARGS`` with an explicit ``--url``/``--api-key`` (``key``
    None: the server's environment, so the defaults find the URL and the bootstrap key)."""
    env = server.env() if key is None else _bare_env()
    env["COLUMNS"] = "200"  # a wide table: no column folded
    explicit = [] if key is None else ["--url", server.api, "--api-key", key]
    return subprocess.run(
        [str(BIN), "sandboxes", command, *explicit, *args],  # options before any "--"
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _bare_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VOIDRUN_")}


@pytest.fixture(scope="module")
def boxes(server: ServerProcess) -> Iterator[dict[str, str]]:
    with server.client() as client:
        one = create_sandbox(client, name="cli-one", labels={"team": "a"})
        two = create_sandbox(client, name="cli-two", labels={"team": "b"})
        yield {"one": str(one["id"]), "two": str(two["id"])}


def json_rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_list_table_json_and_filters(server: ServerProcess, boxes: dict[str, str]) -> None:
    table = cli(server, "list")  # URL and key from the server's own settings
    assert table.returncode == 0, table.stderr
    for header in ("id", "name", "status", "image", "cpu/mem", "age"):
        assert header in table.stdout
    for name, box in (("cli-one", boxes["one"]), ("cli-two", boxes["two"])):
        [row] = [line for line in table.stdout.splitlines() if box in line]
        assert name in row and "running" in row and "code:" in row and "MiB" in row

    rows = json_rows(cli(server, "list", "--json", key=server.api_key))
    assert {boxes["one"], boxes["two"]} <= {r["id"] for r in rows}
    assert all(r["status"] and r["image"] and r["createdAt"] for r in rows)

    labelled = json_rows(cli(server, "list", "--json", "--label", "team=a", key=server.api_key))
    assert [r["id"] for r in labelled] == [boxes["one"]]

    with server.client() as client:
        assert client.post(f"/sandboxes/{boxes['two']}/pause").status_code == 200
    try:
        paused = json_rows(cli(server, "list", "--json", "--status", "paused", key=server.api_key))
        assert [r["id"] for r in paused] == [boxes["two"]]
        running = json_rows(
            cli(server, "list", "--json", "--status", "running", key=server.api_key)
        )
        assert boxes["one"] in {r["id"] for r in running} and boxes["two"] not in str(running)
    finally:
        with server.client() as client:
            assert client.post(f"/sandboxes/{boxes['two']}/resume").status_code == 200

    bad = cli(server, "list", "--status", "sleepy", key=server.api_key)
    assert bad.returncode == 2 and "running" in bad.stderr


def test_list_of_another_org_is_its_own(server: ServerProcess, boxes: dict[str, str]) -> None:
    other = server.new_tenant("cli-other")
    assert json_rows(cli(server, "list", "--json", key=other)) == []
    empty = cli(server, "list", key=other)
    assert empty.returncode == 0 and "No sandboxes" in empty.stdout


def test_exec_prints_output_and_exits_with_the_code(
    server: ServerProcess, boxes: dict[str, str]
) -> None:
    box = boxes["one"]
    result = cli(server, "exec", box, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    line = cli(server, "exec", box, "--", "cd /tmp && echo $((6 * 7)) $(pwd)", key=server.api_key)
    assert (line.returncode, line.stdout) == (0, "42 /tmp\n")
    flags = cli(server, "exec", "--cwd", "/etc", "--env", "A=b=c", box, "--", "echo $A; pwd")
    assert (flags.returncode, flags.stdout) == (0, "b=c\n/etc\n")


def test_exec_stream_prints_output_as_it_comes(
    server: ServerProcess, boxes: dict[str, str]
) -> None:
    box = boxes["one"]
    # the command waits for a file that the test creates only after reading "ready" from the
    # CLI: output that arrived before the command ended (no timing involved)
    script = (
        "echo ready; while [ ! -e /root/go ]; do sleep 0.01; done; echo done; echo e >&2; exit 3"
    )
    with subprocess.Popen(
        [str(BIN), "sandboxes", "exec", "--stream", "--timeout", "120", box, "--", script],
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "ready\n"
        assert proc.poll() is None
        with server.client() as client:
            made = client.post(f"/sandboxes/{box}/exec", json={"command": "touch /root/go"})
            assert made.json()["data"]["exitCode"] == 0
        assert proc.stdout.read() == "done\n"
        assert proc.stderr.read() == "e\n"
        assert proc.wait(timeout=60) == 3


def read_until(fd: int, pattern: str, seen: bytearray) -> str:
    """Read the pty until ``pattern`` matches what it printed so far, terminal escapes left
    out (bounded, no timing)."""
    for _ in range(5000):
        text = ESCAPES.sub("", seen.decode(errors="replace"))
        if re.search(pattern, text):
            return text
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, f"no output; so far: {text[-500:]!r}"
        seen += os.read(fd, 65536)
    pytest.fail(f"{pattern!r} never came: {seen.decode(errors='replace')[-500:]!r}")


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_shell_on_a_terminal(server: ServerProcess, boxes: dict[str, str]) -> None:
    box = boxes["one"]
    master, slave = pty.openpty()
    set_size(slave, 30, 100)
    before = termios.tcgetattr(slave)
    seen = bytearray()
    with subprocess.Popen(
        [str(BIN), "sandboxes", "shell", box],
        env=server.env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    ) as proc:
        try:
            read_until(master, r"# $", seen)
            assert termios.tcgetattr(slave)[3] & termios.ECHO == 0  # raw: the sandbox echoes
            os.write(master, b"echo hello\r")
            read_until(master, r"[\r\n]hello\r\n[\s\S]*# $", seen)
            os.write(master, b"stty size\r")
            read_until(master, r"[\r\n]30 100\r\n[\s\S]*# $", seen)  # created at the tty's size
            with server.client() as client:
                sessions = client.get(f"/sandboxes/{box}/pty/sessions").json()["data"]["sessions"]
            assert [s["clients"] for s in sessions] == [1]

            set_size(slave, 40, 120)
            proc.send_signal(signal.SIGWINCH)  # what the kernel sends a tty's foreground
            for _ in range(100):  # the resize goes over HTTP, the keys over the WebSocket
                del seen[:]
                os.write(master, b"stty size\r")
                text = read_until(master, r"[\r\n]\d+ \d+\r\n[\s\S]*# $", seen)
                if re.search(r"[\r\n]40 120\r\n", text):
                    break
            else:
                pytest.fail("the terminal was never resized")

            os.write(master, b"exit\r")
            assert proc.wait(timeout=60) == 0
            assert termios.tcgetattr(slave) == before  # the terminal is restored
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
            os.close(slave)
    with server.client() as client:  # the command deleted its session on the way out
        assert client.get(f"/sandboxes/{box}/pty/sessions").json()["data"]["sessions"] == []


def test_shell_ended_by_sigterm_restores_the_terminal(
    server: ServerProcess, boxes: dict[str, str]
) -> None:
    box = boxes["one"]
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    try:
        with subprocess.Popen(
            [str(BIN), "sandboxes", "shell", box], env=server.env(), stdin=slave, stdout=slave
        ) as proc:
            read_until(master, r"# $", bytearray())
            assert termios.tcgetattr(slave) != before  # raw
            proc.terminate()
            assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    with server.client() as client:
        assert client.get(f"/sandboxes/{box}/pty/sessions").json()["data"]["sessions"] == []


def test_shell_with_stdin_not_a_terminal(server: ServerProcess, boxes: dict[str, str]) -> None:
    box = boxes["one"]
    piped = cli(server, "shell", box, stdin="echo hel''lo\nexit 3\n")
    assert piped.returncode == 3, piped.stderr
    assert re.search(r"^hello\r?$", piped.stdout, re.M), piped.stdout
    ended = cli(server, "shell", box, stdin="echo $((6 * 7))")  # no exit, no newline: EOF types it
    assert ended.returncode == 0, ended.stderr
    assert re.search(r"^42\r?$", ended.stdout, re.M), ended.stdout
    with server.client() as client:
        assert client.get(f"/sandboxes/{box}/pty/sessions").json()["data"]["sessions"] == []


def test_kill_asks_unless_yes(server: ServerProcess) -> None:
    with server.client() as client:
        box = str(create_sandbox(client, name="cli-kill")["id"])
    refused = cli(server, "kill", box)  # stdin is not a terminal: no prompt, no delete
    assert refused.returncode == 1 and "--yes" in refused.stderr
    master, slave = pty.openpty()
    try:
        with subprocess.Popen(
            [str(BIN), "sandboxes", "kill", box], env=server.env(), stdin=slave, stdout=slave
        ) as proc:
            seen = bytearray()
            read_until(master, rf"Delete {box} \(cli-kill\)\?", seen)
            os.write(master, b"n\r")
            assert proc.wait(timeout=60) == 1
    finally:
        os.close(master)
        os.close(slave)
    with server.client() as client:
        assert client.get(f"/sandboxes/{box}").json()["data"]["status"] == "running"
    done = cli(server, "kill", "--yes", box)
    assert done.returncode == 0 and f"Deleted sandbox {box} (cli-kill)" in done.stdout
    with server.client() as client:
        assert client.get(f"/sandboxes/{box}").json()["data"]["status"] == "deleted"
    assert box not in cli(server, "list", "--json").stdout


def test_errors_say_what_to_do(server: ServerProcess, boxes: dict[str, str]) -> None:
    box = boxes["one"]
    for args, code in ((["list"], 1), (["exec", box, "--", "true"], 125), (["shell", box], 125)):
        bad = cli(server, *args, key=BAD_KEY)
        assert bad.returncode == code, (args, bad.stderr)
        assert "refused the API key from --api-key" in bad.stderr and "--api-key" in bad.stderr

    for args, code in (
        (["exec", MISSING, "--", "true"], 125),
        (["exec", "--stream", MISSING, "--", "true"], 125),
        (["shell", MISSING], 125),
        (["kill", "--yes", MISSING], 1),
    ):
        unknown = cli(server, *args, key=server.api_key)
        assert unknown.returncode == code, (args, unknown.stderr)
        assert f"No sandbox {MISSING}" in unknown.stderr and "sandboxes list" in unknown.stderr

    nowhere = f"http://127.0.0.1:{free_port()}/api"
    for args, code in ((["list"], 1), (["exec", box, "--", "true"], 125)):
        down = subprocess.run(
            [str(BIN), "sandboxes", args[0], "--url", nowhere, "--api-key", server.api_key]
            + args[1:],
            env=_bare_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == code
        assert f"Cannot reach the server at {nowhere}" in down.stderr
        assert "voidrun-server serve" in down.stderr

    env = {**_bare_env(), "VOIDRUN_DATA_DIR": str(server.data_dir / "nothing-here")}
    keyless = subprocess.run(
        [str(BIN), "sandboxes", "list", "--url", server.api],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert keyless.returncode == 1 and "No API key" in keyless.stderr
    assert "VOIDRUN_API_KEY" in keyless.stderr
    # the key from VOIDRUN_API_KEY works as --api-key does
    with_env = subprocess.run(
        [str(BIN), "sandboxes", "list", "--json", "--url", server.api],
        env={**env, "VOIDRUN_API_KEY": server.api_key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert box in with_env.stdout, with_env.stderr
    assert httpx.get(f"{server.api}/health").status_code == 200
