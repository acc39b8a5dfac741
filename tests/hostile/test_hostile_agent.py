"""A sandbox whose PID 1 lies on the agent socket hurts nobody but itself.

Each test replaces one sandbox's agent with ``hostile_agent.py`` in one mode, the way root inside
would (a program of its own as PID 1 after a restart), and checks: that sandbox ends in
``error`` with the reason; another org's sandbox keeps answering exec, in a latency comparable
to before (measured in the same test); the server's memory stays bounded; nothing answers 500.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.memory import reset_peak_rss, vm_kib
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = pytest.mark.sandbox

MODES = [
    "garbage-before-hello",
    "bad-type",
    "huge-length",
    "truncated",
    "bad-utf8",
    "deep-json",
    "head-flood",
    "endless-res",
]
RSS_GROWTH_LIMIT_KB = 64 * 1024
DISPATCHER = '''"""Test build: runs the hostile agent when /root/.hostile names a mode."""
import sys

from .real_main import main as real_main


def main(argv=None):
    try:
        with open("/root/.hostile") as f:
            mode = f.read().strip()
    except OSError:
        mode = ""
    if mode:
        from . import hostile_agent

        hostile_agent.run(mode, sys.argv if argv is None else argv)  # forked: no argv of its own
        return 0
    return real_main(argv)
'''


def install_hostile_agent(data_dir: Path) -> None:
    """Swap the server's installed agent for a dispatcher (host side, as the test is root)."""
    (installed,) = [p for p in (data_dir / "agent").iterdir() if not p.name.startswith(".")]
    shutil.copyfile(installed / "__main__.py", installed / "real_main.py")
    shutil.copyfile(Path(__file__).with_name("hostile_agent.py"), installed / "hostile_agent.py")
    (installed / "__main__.py").write_text(DISPATCHER)
    for name in ("real_main.py", "hostile_agent.py", "__main__.py"):
        os.chmod(installed / name, 0o644)
    for stale in (installed / "__pycache__").glob("__main__*"):
        stale.unlink()


# (relay-overrun is a client-level test, tests/agent/test_client_hostile.py: the proxy reads
# what it is sent, so a flood reaches h11, which refuses it: a 502, not a protocol violation)
RELAY_MODES = ["relay-data-after-end", "relay-no-head"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # previews through the agent (port.connect), as on gvisor and microvm, for RELAY_MODES
    with sandbox_server(VOIDRUN_PROXY_THROUGH_AGENT="true") as proc:
        install_hostile_agent(proc.data_dir)
        proc.stop()  # the agent fork server loaded the real agent at start: load the swap
        proc.start()
        yield proc


def second_org_key(server: ServerProcess) -> str:
    assert server.cli("orgs", "create", "victim").returncode == 0
    result = server.cli("users", "create", "--org", "victim", "--email", "v@victim.example")
    assert result.returncode == 0, result.stderr
    result = server.cli("keys", "create", "--org", "victim", "--name", "main")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def victim(server: ServerProcess) -> Iterator[tuple[httpx.Client, str]]:
    with server.client(second_org_key(server)) as client:
        box = create_sandbox(client, name="victim")
        yield client, str(box["id"])


def exec_latencies(client: httpx.Client, sandbox_id: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(f"/sandboxes/{sandbox_id}/exec", json={"command": "echo ok"})
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["stdout"] == "ok\n"
    return times


def status_of(client: httpx.Client, sandbox_id: str) -> dict[str, object]:
    response = client.get(f"/sandboxes/{sandbox_id}")
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()["data"]
    return data


@pytest.mark.parametrize("mode", MODES)
def test_a_lying_agent_only_hurts_its_own_sandbox(
    server: ServerProcess, victim: tuple[httpx.Client, str], mode: str
) -> None:
    assert server.process is not None
    other, other_id = victim
    with server.client() as client:
        box = str(create_sandbox(client, name=f"hostile-{mode}")["id"])
        plant = client.post(
            f"/sandboxes/{box}/exec", json={"command": f"echo {mode} > /root/.hostile"}
        )
        assert plant.status_code == 200, plant.text
        assert client.post(f"/sandboxes/{box}/stop").status_code == 200

        baseline = exec_latencies(other, other_id, 15)
        rss_before = reset_peak_rss(server.process.pid)

        def attack() -> list[httpx.Response]:
            responses = [client.post(f"/sandboxes/{box}/start")]
            if responses[0].status_code == 200:
                command = {"command": "echo hi"}
                responses.append(client.post(f"/sandboxes/{box}/exec", json=command))
            return responses

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(attack)
            during = exec_latencies(other, other_id, 15)
            while not pending.done():
                during += exec_latencies(other, other_id, 5)
            responses = pending.result()

        # The attacker's own requests fail cleanly: 502 (agent error), never a 500.
        assert responses[-1].status_code == 502, [r.text for r in responses]
        assert "error" in responses[-1].json()
        deadline = time.monotonic() + 60
        while (state := status_of(client, box))["status"] != "error":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert "broke the protocol" in str(state.get("error")), state
        refused = client.post(f"/sandboxes/{box}/exec", json={"command": "true"})
        assert 400 <= refused.status_code < 500, refused.text

        # Everyone else goes on, at the speed they had before, and the server stays small.
        assert statistics.median(during) <= 5 * statistics.median(baseline) + 0.05, (
            baseline,
            during,
        )
        peak_growth = vm_kib(server.process.pid, "VmHWM") - rss_before
        assert peak_growth < RSS_GROWTH_LIMIT_KB, f"server peak RSS grew by {peak_growth} KiB"
        assert client.get("/sandboxes", params={"limit": 1}).status_code == 200
        assert client.delete(f"/sandboxes/{box}").status_code == 200


@pytest.mark.parametrize("mode", RELAY_MODES)
def test_a_lying_port_relay_only_hurts_its_own_sandbox(
    server: ServerProcess, victim: tuple[httpx.Client, str], mode: str
) -> None:
    """An agent that breaks the protocol on ``port.connect`` (the preview proxy's relay): the
    preview answers 502, the sandbox ends in ``error``, the victim's exec and the server's
    memory are untouched."""
    assert server.process is not None
    other, other_id = victim
    with server.client() as client:
        ports = [{"protocol": "http", "port": 8000}]
        box = str(create_sandbox(client, name=f"hostile-{mode}", ports=ports)["id"])
        plant = client.post(
            f"/sandboxes/{box}/exec", json={"command": f"echo {mode} > /root/.hostile"}
        )
        assert plant.status_code == 200, plant.text
        assert client.post(f"/sandboxes/{box}/stop").status_code == 200
        assert client.post(f"/sandboxes/{box}/start").status_code == 200
        rss_before = reset_peak_rss(server.process.pid)

        preview = client.get(f"/sandboxes/{box}/ports/8000/", timeout=60)
        assert preview.status_code == 502, preview.text
        assert "error" in preview.json()
        deadline = time.monotonic() + 60
        while (state := status_of(client, box))["status"] != "error":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert "broke the protocol" in str(state.get("error")), state
        assert exec_latencies(other, other_id, 3)
        peak_growth = vm_kib(server.process.pid, "VmHWM") - rss_before
        assert peak_growth < RSS_GROWTH_LIMIT_KB, f"server peak RSS grew by {peak_growth} KiB"
        assert client.delete(f"/sandboxes/{box}").status_code == 200
