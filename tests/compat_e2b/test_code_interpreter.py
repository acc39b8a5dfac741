"""The official ``e2b-code-interpreter==2.11.5`` SDK, unchanged, against a real server.

Through the E2B gateway (``/e2b``), whose port-49999 proxy starts the sandbox's interpreter
first (``services/interpreter.py``): ``run_code`` keeps state across calls, a matplotlib plot
comes back as PNG, an exception as ``error`` with its traceback, code contexts
(create/list/restart/remove), bash and javascript contexts, and another org's key gets the
SDK's not-found.

The SDK is configured as a user would: ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` both
``http://<server>/e2b``, ``E2B_API_KEY`` one of our API keys.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import e2b
import pytest
from e2b_code_interpreter import Sandbox

from tests.support.server import ServerProcess

pytestmark = pytest.mark.sandbox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def interp_env(server: ServerProcess) -> Iterator[None]:
    """conftest's ``e2b_env`` for the whole module (one sandbox serves every test here)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("E2B_DOMAIN", "E2B_DEBUG", "E2B_ACCESS_TOKEN"):
            patch.delenv(name, raising=False)
        patch.setenv("E2B_API_URL", f"{server.url}/e2b")
        patch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
        patch.setenv("E2B_API_KEY", server.api_key)
        yield


@pytest.fixture(scope="module")
def sbx(interp_env: None) -> Iterator[Any]:
    sandbox = Sandbox.create(timeout=600)
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_run_code_keeps_state_across_calls(sbx: Any) -> None:
    first = sbx.run_code("x = 41")
    assert first.error is None
    second = sbx.run_code("x + 1")
    assert second.text == "42"
    assert second.execution_count == first.execution_count + 1


def test_stdout_stderr_and_callbacks(sbx: Any) -> None:
    seen: list[str] = []
    execution = sbx.run_code(
        "import sys\nprint('out')\nprint('err', file=sys.stderr)",
        on_stdout=lambda message: seen.append(message.line),
    )
    assert execution.logs.stdout == ["out\n"] and execution.logs.stderr == ["err\n"]
    assert seen == ["out\n"]


def test_a_matplotlib_plot_comes_back_as_png(sbx: Any) -> None:
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()"
    )
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(PNG_MAGIC)


def test_an_exception_comes_back_as_error_with_traceback(sbx: Any) -> None:
    execution = sbx.run_code("def f():\n    return 1 / 0\nf()")
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert "return 1 / 0" in ANSI.sub("", execution.error.traceback)


def test_code_contexts(sbx: Any) -> None:
    context = sbx.create_code_context(language="python", cwd="/tmp")
    assert (context.language, context.cwd) == ("python", "/tmp")
    assert sbx.run_code("import os\nos.getcwd()", context=context).text == "/tmp"
    sbx.run_code("here = 1", context=context)
    assert sbx.run_code("here", context=context).text == "1"
    assert sbx.run_code("here").error.name == "NameError"
    assert context.id in [c.id for c in sbx.list_code_contexts()]
    sbx.restart_code_context(context)
    assert sbx.run_code("here", context=context).error.name == "NameError"
    sbx.remove_code_context(context)
    assert context.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(e2b.NotFoundException):
        sbx.run_code("1", context=context)


def test_a_bash_context(sbx: Any) -> None:
    sbx.run_code("GREETING=hello", language="bash")
    execution = sbx.run_code("echo $GREETING world", language="bash")
    assert execution.logs.stdout == ["hello world\n"]


def test_a_javascript_context(sbx: Any) -> None:
    sbx.run_code("const base = 40", language="javascript")
    assert sbx.run_code("base + 2", language="javascript").text == "42"
    assert sbx.run_code("null.x", language="javascript").error.name == "TypeError"


def test_an_unsupported_language_is_refused(sbx: Any) -> None:
    with pytest.raises(e2b.SandboxException, match="unsupported language"):
        sbx.run_code("1", language="cobol")


def test_another_orgs_key_gets_not_found(server: ServerProcess, sbx: Any) -> None:
    stranger = server.new_tenant("interp-stranger")
    with pytest.raises(e2b.NotFoundException):
        Sandbox.connect(sbx.sandbox_id, api_key=stranger)
