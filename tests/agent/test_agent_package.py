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
