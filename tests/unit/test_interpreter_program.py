"""The in-sandbox code interpreter program (``voidrun_server.interpreter``), on the host.

What it may import (it runs with a sandbox image's python3), that the server never imports its
modules, and its HTTP protocol with bash contexts (the host has bash but no Jupyter: a python
context refuses with a plain-text 500 here; the real kernels are tested in sandboxes, in
``tests/api/test_interpreter.py``).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import free_port
from tests.unit.test_layers import imports
from voidrun_server import interpreter

PROGRAM_DIR = Path(interpreter.__file__).parent
PACKAGE_ROOT = PROGRAM_DIR.parent
ALLOWED = set(sys.stdlib_module_names) | {"jupyter_client"}


@pytest.mark.parametrize(
    "name", sorted(n for n in interpreter.program_files() if n.endswith(".py"))
)
def test_the_program_imports_only_stdlib_jupyter_client_and_itself(name: str) -> None:
    tree = ast.parse((PROGRAM_DIR / name).read_text(), name, feature_version=(3, 9))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            assert module.split(".")[0] in ALLOWED, f"{name}:{node.lineno} imports {module}"


def test_every_file_of_the_package_is_shipped() -> None:
    shipped = {p.name for p in PROGRAM_DIR.iterdir() if p.suffix in (".py", ".js")}
    assert set(interpreter.program_files()) == shipped


def test_the_server_never_imports_the_program_modules() -> None:
    """Only the package's ``__init__`` (what to ship, how to start it) is the server's."""
    modules = {Path(n).stem for n in interpreter.program_files() if n.endswith(".py")}
    modules.discard("__init__")
    forbidden = {f"voidrun_server.interpreter.{m}" for m in modules}
    for path in PACKAGE_ROOT.rglob("*.py"):
        if path.parent == PROGRAM_DIR:
            continue
        for line, module in imports(path):
            assert not any(module == f or module.startswith(f + ".") for f in forbidden), (
                f"{path}:{line} imports {module}"
            )


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The program, installed as the service installs it, serving on a free loopback port."""
    root = tmp_path_factory.mktemp("interp")
    package = root / interpreter.PACKAGE
    package.mkdir()
    for name, data in interpreter.program_files().items():
        (package / name).write_bytes(data)
    home = root / "home"
    home.mkdir()
    port = free_port()
    with (root / "log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", interpreter.bootstrap_code(str(root)), "--port", str(port)]
            + ["--cwd", str(home), "--no-prewarm"],
            stderr=log,
        )
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health")
            break
        except httpx.TransportError:
            assert proc.poll() is None, (root / "log").read_text()
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def run(url: str, **body: object) -> list[dict[str, object]]:
    response = httpx.post(f"{url}/execute", json=body, timeout=30)
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1] == {"type": "end_of_execution"}
    return [line for line in lines[:-1] if line["type"] != "keepalive"]


def text(lines: list[dict[str, object]], stream: str = "stdout") -> str:
    return "".join(str(line["text"]) for line in lines if line["type"] == stream)


def test_health_names_the_interpreter(program: str) -> None:
    response = httpx.get(f"{program}/health")
    assert response.status_code == 200 and response.json() == "OK"
    assert response.headers["x-voidrun-interpreter"] == interpreter.version()


def test_a_bash_context_keeps_its_state_and_splits_its_streams(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "bash"}).json()
    assert made["language"] == "bash" and made["cwd"].endswith("/home")
    first = run(
        program, code="X=41; cd /; echo out; echo err >&2; printf tail", context_id=made["id"]
    )
    assert text(first) == "out\ntail" and text(first, "stderr") == "err\n"
    again = run(program, code="echo $((X + 1)) $PWD", context_id=made["id"])
    assert text(again) == "42 /\n"
    assert not [line for line in again if line["type"] == "error"]


def test_a_marker_lookalike_in_the_output_does_not_end_the_cell(program: str) -> None:
    lines = run(
        program, code="echo __voidrun_end_; echo __voidrun_end_0 1; echo done", language="bash"
    )
    assert text(lines) == "__voidrun_end_\n__voidrun_end_0 1\ndone\n"


def test_bash_exit_status_is_an_error_and_exit_restarts_the_context(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "bash"}).json()
    failed = run(program, code="Y=1; false", context_id=made["id"])
    assert [line for line in failed if line["type"] == "error"] == [
        {"type": "error", "name": "ExitCode", "value": "1", "traceback": ""}
    ]
    gone = run(program, code="echo bye; exit 3", context_id=made["id"])
    assert text(gone) == "bye\n"
    assert [line["name"] for line in gone if line["type"] == "error"] == ["ContextRestarting"]
    assert text(run(program, code="echo ${Y-unset}", context_id=made["id"])) == "unset\n"


def test_env_vars_apply_to_one_cell_only(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "bash"}).json()
    one = run(program, code='echo "$V"', context_id=made["id"], env_vars={"V": "a 'b' $c"})
    assert text(one) == "a 'b' $c\n"
    assert text(run(program, code="echo ${V-unset}", context_id=made["id"])) == "unset\n"


def test_a_client_that_leaves_interrupts_the_cell(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "bash"}).json()
    body = {"code": "Z=7; echo started; sleep 600; echo never", "context_id": made["id"]}
    with httpx.stream("POST", f"{program}/execute", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if json.loads(line).get("text") == "started\n":
                break
    # the context is free again (the sleep was interrupted) and kept its state
    assert text(run(program, code="echo $Z", context_id=made["id"])) == "7\n"


def test_one_context_runs_one_cell_at_a_time(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "bash"}).json()
    code = "n=$(cat count 2>/dev/null || echo 0); sleep 0.2; echo $((n + 1)) > count; cat count"
    outs: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: outs.append(text(run(program, code=code, context_id=made["id"])))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outs) == ["1\n", "2\n", "3\n", "4\n"]
    httpx.delete(f"{program}/contexts/{made['id']}")


def test_contexts_list_restart_delete(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "bash", "cwd": "/tmp"}).json()
    assert made["cwd"] == "/tmp"
    run(program, code="W=1", context_id=made["id"])
    assert made in httpx.get(f"{program}/contexts").json()
    assert httpx.post(f"{program}/contexts/{made['id']}/restart").status_code == 204
    assert text(run(program, code="echo ${W-unset}", context_id=made["id"])) == "unset\n"
    assert httpx.delete(f"{program}/contexts/{made['id']}").status_code == 204
    assert made not in httpx.get(f"{program}/contexts").json()
    gone = httpx.post(f"{program}/execute", json={"code": "1", "context_id": made["id"]})
    assert gone.status_code == 404 and made["id"] in gone.text
    assert httpx.delete(f"{program}/contexts/{made['id']}").status_code == 404
    assert httpx.post(f"{program}/contexts/{made['id']}/restart").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"code": "1", "language": "cobol"}, 400, "unsupported language"),
        ({"code": "1", "language": "typescript"}, 400, "python, bash, javascript"),
        ({"code": "1", "language": "bash", "context_id": "x"}, 400, "Only one of"),
        ({"code": 1}, 400, "code must be a string"),
        ({"code": "1", "language": "bash", "env_vars": {"A B": "1"}}, 400, "shell variable"),
        ({"code": "1", "language": "bash", "env_vars": {"A": 1}}, 400, "env_vars"),
        ([1], 400, "JSON object"),
    ],
)
def test_bad_requests_are_plain_400s(program: str, body: object, status: int, words: str) -> None:
    response = httpx.post(f"{program}/execute", json=body)
    assert response.status_code == status and words in response.text


def test_bad_context_requests(program: str) -> None:
    assert httpx.post(f"{program}/contexts", json={"cwd": "relative"}).status_code == 400
    assert httpx.post(f"{program}/contexts", json={"cwd": "/nonexistent-dir"}).status_code == 400
    assert httpx.post(f"{program}/execute", content=b"{nope").status_code == 400
    assert httpx.get(f"{program}/nowhere").status_code == 404


def test_without_jupyter_a_python_context_is_a_clear_500(program: str) -> None:
    try:
        import jupyter_client  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("jupyter_client is installed on this host")
    response = httpx.post(f"{program}/execute", json={"code": "1"})
    assert response.status_code == 500
    assert "could not start a python context" in response.text


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="no node on this host")


def results(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in lines if line["type"] == "result"]


@needs_node
def test_a_javascript_context_keeps_globals_and_declarations(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "javascript"}).json()
    assert made["language"] == "javascript"
    first = run(
        program, code="const x = 41; globalThis.y = 1; console.log('hi')", context_id=made["id"]
    )
    assert text(first) == "hi\n" and results(first) == []
    [value] = results(run(program, code="x + y", context_id=made["id"]))
    assert value == {"type": "result", "is_main_result": True, "text": "42"}
    [word] = results(run(program, code="'abc'", context_id=made["id"]))
    assert word["text"] == "abc"
    [obj] = results(run(program, code="({a: [1, 2]})", context_id=made["id"]))
    assert obj["text"] == "{ a: [ 1, 2 ] }"


@needs_node
def test_javascript_errors_awaits_and_interrupts(program: str) -> None:
    made = httpx.post(f"{program}/contexts", json={"language": "js"}).json()
    ctx = made["id"]
    [error] = [
        line
        for line in run(
            program, code="function f() { throw new RangeError('deep') }\nf()", context_id=ctx
        )
        if line["type"] == "error"
    ]
    assert (error["name"], error["value"]) == ("RangeError", "deep")
    assert "at f (cell.js:1" in str(error["traceback"]) and "node_runner" not in str(
        error["traceback"]
    )
    [awaited] = results(
        run(program, code="await new Promise(r => setTimeout(() => r(7), 10))", context_id=ctx)
    )
    assert awaited["text"] == "7"
    env = run(program, code="process.env.GREETING", context_id=ctx, env_vars={"GREETING": "hey"})
    assert results(env)[0]["text"] == "hey"
    assert results(run(program, code="process.env.GREETING", context_id=ctx)) == []
    body = {"code": "globalThis.kept = 5; console.log('spin'); while (true) {}", "context_id": ctx}
    with httpx.stream("POST", f"{program}/execute", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if json.loads(line).get("text") == "spin\n":
                break
    assert results(run(program, code="kept + 1", context_id=ctx))[0]["text"] == "6"
