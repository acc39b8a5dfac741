"""Fixtures that run the real agent as a subprocess and drive it through the real client.

The agent runs exactly as a sandbox driver starts it: a copy of the package under the name
``voidrun_agent`` in a temp "mount" directory, ``python -I -S -c <bootstrap>``. With ``-S`` the
venv's site-packages are invisible, so an accidental import of the server would fail here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.agent_helpers import AgentFactory, AgentProcess, copy_agent
from voidrun_server.agent_launch import agent_argv


@pytest.fixture(scope="session")
def agent_mount(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_agent(tmp_path_factory.mktemp("mount"))


@pytest.fixture
def start_agent(
    agent_mount: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentFactory]:
    """Start agents (socket and log outside the test's tmp_path); all stop at teardown."""
    started: list[AgentProcess] = []
    home = tmp_path_factory.mktemp("agent")

    def start(
        *,
        socket: Path | None = None,
        mount: Path = agent_mount,
        env_file: Path | None = None,
        wrap: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> AgentProcess:
        socket = socket or home / f"run{len(started)}" / "agent.sock"
        log = home / f"agent{len(started)}.log"
        argv = agent_argv(
            str(socket),
            str(mount),
            env_file=str(env_file) if env_file else None,
            python=(sys.executable,),
        )
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                (wrap or []) + argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        agent = AgentProcess(proc, socket, log)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.terminate()


@pytest.fixture
def agent(start_agent: AgentFactory) -> AgentProcess:
    return start_agent()
