"""The agent package stays importable inside any sandbox: stdlib only, relative imports only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from voidrun_server.agent_launch import AGENT_PACKAGE_DIR, PACKAGE_NAME, agent_argv, bootstrap_code

AGENT_FILES = sorted(AGENT_PACKAGE_DIR.rglob("*.py"))


def test_the_package_is_found() -> None:
    assert AGENT_PACKAGE_DIR.name == "agent"
    assert {p.name for p in AGENT_FILES} >= {"__init__.py", "__main__.py", "protocol.py"}


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: p.name)
def test_agent_imports_only_stdlib_and_relative_modules(path: Path) -> None:
    # feature_version rejects syntax newer than the oldest Python the agent must run on.
    tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:
                continue
            assert node.module is not None
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names, f"{path.name}:{node.lineno} imports {module}"


def test_agent_argv() -> None:
    argv = agent_argv("/run/voidrun/agent.sock")
    assert argv == [
        "python3",
        "-I",
        "-S",
        "-c",
        bootstrap_code("/opt/voidrun"),
        "--socket",
        "/run/voidrun/agent.sock",
    ]
    assert agent_argv("/s", "/mnt", env_file="/e.json")[-2:] == ["--env-file", "/e.json"]


def test_bootstrap_runs_an_isolated_copy(agent_mount: Path) -> None:
    """A copy under another name, with site-packages hidden, must still start."""
    assert (agent_mount / PACKAGE_NAME / "__main__.py").is_file()
    argv = agent_argv("/unused", str(agent_mount), python=(sys.executable,))
    done = subprocess.run(
        [*argv[:5], "--help"], capture_output=True, timeout=60, check=False, env={}
    )
    assert done.returncode == 0, done.stderr
    assert b"--socket" in done.stdout
    hidden = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import voidrun_server"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert hidden.returncode != 0  # so the agent tests would catch a server import


# What an idle agent must not have imported: the costs per sandbox the agent was rewritten to
# avoid (asyncio and friends), and every op family's module (imported on its first op).
HEAVY_MODULES = {
    "asyncio", "typing", "json", "re", "logging", "subprocess", "threading", "socket",
    "signal", "enum", "selectors", "collections", "functools", "weakref", "shutil", "tempfile",
    "secrets", "random", "ctypes", "tarfile", "zipfile", "zlib", "fnmatch", "pty", "termios",
    "tty", "fcntl", "concurrent", "contextlib", "traceback", "argparse", "ssl",
}  # fmt: skip
FAMILY_MODULES = {
    "process", "direct", "commands", "shells", "pty", "terminal", "files", "fsops", "fsquery",
    "fsutil", "archive", "extract", "watch", "inotify", "threads", "ring",
}  # fmt: skip


def imported_by(mount: Path, code: str) -> set[str]:
    probe = (
        f"import sys; sys.path.insert(0, {str(mount)!r}); before = set(sys.modules); {code}; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_start_up_imports_only_what_the_idle_agent_needs(agent_mount: Path) -> None:
    loaded = imported_by(agent_mount, f"import {PACKAGE_NAME}.__main__")
    assert f"{PACKAGE_NAME}.server" in loaded
    assert loaded & HEAVY_MODULES == set()
    assert {f"{PACKAGE_NAME}.{name}" for name in FAMILY_MODULES} & loaded == set()


def test_json_errors_are_worded_like_json_without_json_imported(agent_mount: Path) -> None:
    """``_json`` needs ``json.decoder`` for its error messages; the agent imports it only then."""
    code = (
        f"from {PACKAGE_NAME}.protocol import parse_header, ProtocolError\n"
        "try:\n parse_header(b'{nope')\nexcept ProtocolError as e:\n print(e, file=sys.stderr)"
    )
    probe = f"import sys; sys.path.insert(0, {str(agent_mount)!r})\n{code}"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stderr.strip() == (
        "frame header is not JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )


def test_every_lazily_imported_op_resolves_to_a_handler() -> None:
    import inspect

    from voidrun_server.agent.ops import LAZY, OPS, resolve

    assert set(LAZY) < set(OPS)
    for op in LAZY:
        handler = resolve(op)
        assert inspect.iscoroutinefunction(handler), op
        assert handler.__module__ == f"voidrun_server.agent.{LAZY[op][0]}"
