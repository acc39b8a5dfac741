"""The code interpreter in real sandboxes, through the preview proxy to port 49999.

The program (``voidrun_server.interpreter``) is installed and started here the way
``services/interpreter.py`` does it (files through the API, a background command), and spoken
to through the path-form preview URL, as any HTTP client of the port would: real Jupyter
kernels of the ``code`` image (state, display data, matplotlib PNGs, tracebacks), contexts,
a bash context, and two sandboxes that share nothing. The service itself (start on demand,
hostile ports, timeouts) is ``test_interpreter_service.py``.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess
from voidrun_server import interpreter

pytestmark = pytest.mark.sandbox

PORT = interpreter.PORT
INSTALL = "/opt/interp-test"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server() as proc:
        yield proc


def start_interpreter(client: httpx.Client) -> str:
    """A sandbox with the interpreter running on its port 49999 (declared: previews serve
    declared ports only)."""
    made = create_sandbox(client, autoSleep=False, ports=[{"protocol": "http", "port": PORT}])
    sid = str(made["id"])
    for name, data in interpreter.program_files().items():
        path = f"{INSTALL}/{interpreter.PACKAGE}/{name}"
        upload = client.post(f"/sandboxes/{sid}/files/upload", params={"path": path}, content=data)
        assert upload.status_code == 200, upload.text
    code = interpreter.bootstrap_code(INSTALL)
    command = f"exec python3 -I -c {shlex.quote(code)} --port {PORT} --cwd /root"
    run = client.post(f"/sandboxes/{sid}/commands/run", json={"command": command})
    assert run.status_code == 200, run.text
    for _ in range(600):
        health = client.get(f"/sandboxes/{sid}/ports/{PORT}/health")
        if health.status_code == 200:
            assert health.headers["x-voidrun-interpreter"] == interpreter.version()
            return sid
        time.sleep(0.05)
    raise AssertionError(f"the interpreter did not answer: {health.status_code} {health.text}")


@pytest.fixture(scope="module")
def box(server: ServerProcess) -> str:
    with server.client() as client:
        return start_interpreter(client)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        c.timeout = httpx.Timeout(120)
        yield c


def execute(client: httpx.Client, sid: str, code: str, **body: Any) -> list[dict[str, Any]]:
    response = client.post(f"/sandboxes/{sid}/ports/{PORT}/execute", json={"code": code, **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1] == {"type": "end_of_execution"}
    return [line for line in lines[:-1] if line["type"] != "keepalive"]


def of(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["type"] == kind]


def main_text(lines: list[dict[str, Any]]) -> str | None:
    mains = [r for r in of(lines, "result") if r["is_main_result"]]
    return str(mains[0]["text"]) if mains else None


def test_python_state_persists_between_executions(client: httpx.Client, box: str) -> None:
    first = execute(client, box, "x = 41\nimport math")
    assert of(first, "error") == [] and main_text(first) is None
    second = execute(client, box, "x + 1")
    assert main_text(second) == "42"
    counts = [line["execution_count"] for line in of(first + second, "number_of_executions")]
    assert len(counts) == 2 and counts[1] == counts[0] + 1
    assert main_text(execute(client, box, "math.sqrt(x + 8)")) == "7.0"


def test_output_streams_and_string_results(client: httpx.Client, box: str) -> None:
    lines = execute(client, box, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n'abc'")
    assert "".join(line["text"] for line in of(lines, "stdout")) == "out\n"
    assert "".join(line["text"] for line in of(lines, "stderr")) == "err\n"
    assert main_text(lines) == "abc"  # a string's repr, unquoted as E2B's server does


def test_a_matplotlib_figure_comes_back_as_png(client: httpx.Client, box: str) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.title('squares')\n"
        "plt.show()\n"
    )
    results = of(execute(client, box, code), "result")
    pngs = [r for r in results if "png" in r]
    assert len(pngs) == 1 and pngs[0]["is_main_result"] is False
    assert base64.b64decode(pngs[0]["png"]).startswith(PNG_MAGIC)


def test_display_data_html_and_dataframes(client: httpx.Client, box: str) -> None:
    code = (
        "from IPython.display import HTML, display\n"
        "display(HTML('<b>hi</b>'))\n"
        "import pandas as pd\n"
        "pd.DataFrame({'a': [1, 2]})"
    )
    results = of(execute(client, box, code), "result")
    assert results[0]["html"] == "<b>hi</b>" and results[0]["is_main_result"] is False
    assert results[1]["is_main_result"] is True and "<table" in results[1]["html"]


def test_an_exception_is_an_error_with_its_traceback(client: httpx.Client, box: str) -> None:
    lines = execute(client, box, "print('before')\ndef f():\n    return 1 / 0\nf()")
    assert "".join(line["text"] for line in of(lines, "stdout")) == "before\n"
    [error] = of(lines, "error")
    assert error["name"] == "ZeroDivisionError" and error["value"] == "division by zero"
    # IPython's traceback, colours and all (as E2B's kernels send it)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", error["traceback"])
    assert "\x1b[" in error["traceback"]
    assert "ZeroDivisionError" in plain and "return 1 / 0" in plain
    assert main_text(execute(client, box, "'still alive'")) == "still alive"


def test_contexts_create_list_restart_delete(client: httpx.Client, box: str) -> None:
    base = f"/sandboxes/{box}/ports/{PORT}/contexts"
    made = client.post(base, json={"language": "python", "cwd": "/tmp"}).json()
    assert made["language"] == "python" and made["cwd"] == "/tmp"
    ctx = made["id"]
    assert main_text(execute(client, box, "import os\nos.getcwd()", context_id=ctx)) == "/tmp"
    execute(client, box, "only_here = 5", context_id=ctx)
    assert of(execute(client, box, "only_here"), "error")[0]["name"] == "NameError"
    assert main_text(execute(client, box, "only_here", context_id=ctx)) == "5"
    assert made in client.get(base).json()
    assert client.post(f"{base}/{ctx}/restart").status_code == 204
    assert of(execute(client, box, "only_here", context_id=ctx), "error")[0]["name"] == "NameError"
    assert client.delete(f"{base}/{ctx}").status_code == 204
    assert made not in client.get(base).json()
    gone = client.post(
        f"/sandboxes/{box}/ports/{PORT}/execute", json={"code": "1", "context_id": ctx}
    )
    assert gone.status_code == 404


def test_a_bash_context(client: httpx.Client, box: str) -> None:
    first = execute(client, box, "COUNT=41; cd /etc", language="bash")
    assert of(first, "error") == []
    second = execute(client, box, "echo $((COUNT + 1)) $PWD; ls hostname", language="bash")
    assert "".join(line["text"] for line in of(second, "stdout")) == "42 /etc\nhostname\n"
    failed = execute(client, box, "ls /nonexistent", language="bash")
    assert of(failed, "error")[0]["name"] == "ExitCode"
    assert "No such file" in "".join(line["text"] for line in of(failed, "stderr"))


def test_env_vars_of_one_execution(client: httpx.Client, box: str) -> None:
    code = "import os\nos.environ.get('GREETING', 'unset')"
    assert main_text(execute(client, box, code, env_vars={"GREETING": "hello"})) == "hello"
    assert main_text(execute(client, box, code)) == "unset"


def test_two_sandboxes_do_not_share_state(client: httpx.Client, box: str) -> None:
    other = start_interpreter(client)
    execute(client, box, "shared_secret = 'box one'")
    lines = execute(client, other, "shared_secret")
    assert of(lines, "error")[0]["name"] == "NameError"
    assert main_text(execute(client, box, "shared_secret")) == "box one"
    client.delete(f"/sandboxes/{other}")


def test_a_javascript_context(client: httpx.Client, box: str) -> None:
    first = execute(
        client, box, "const base = 40; console.log(typeof require)", language="javascript"
    )
    assert "".join(line["text"] for line in of(first, "stdout")) == "function\n"
    assert main_text(execute(client, box, "base + 2", language="javascript")) == "42"
    [error] = of(execute(client, box, "null.x", language="javascript"), "error")
    assert error["name"] == "TypeError" and "cell.js" in error["traceback"]
    fetched = execute(client, box, "await Promise.resolve(require('os').platform())", language="js")
    assert main_text(fetched) == "linux"
