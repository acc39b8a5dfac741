"""A test-only sandbox driver that runs the real agent as a plain host process. NOT A SANDBOX.

    ┌──────────────────────────────────────────────────────────────────────────────────────┐
    │ THIS DRIVER ISOLATES NOTHING. Every command a "sandbox" runs executes on the host,   │
    │ as the user running the tests, and sees the host's whole file system, processes and  │
    │ network. It exists so that route tests (``tests/inprocess``) run without root in     │
    │ seconds. It lives under tests/ on purpose: no server setting can name it, and the    │
    │ only way in is ``create_app(settings, driver=HostDriver(...))``.                     │
    └──────────────────────────────────────────────────────────────────────────────────────┘

What it does, and what it does not pretend to do:

* **create / start** copy nothing and mount nothing: the agent (the real in-sandbox package,
  copied as ``voidrun_agent`` like ``tests/agent`` does) starts through
  ``agent_launch.agent_argv(..., python=(sys.executable,))`` in a new session, with
  ``<state_dir>/<id>/home`` as its working directory and as ``HOME`` for the commands it runs
  (the sandbox's env vars are written to its ``--env-file`` and may override ``HOME``). The
  agent makes itself a child subreaper outside a PID namespace, so a command's orphans stay
  its descendants, which is what stop and pause walk. Only ``rootfs == /`` is accepted: the
  agent sees the host's root, so pretending to run any other image would be a lie.
* **cpu, mem_mb and disk_mb are not enforced** (no cgroups, no disk image). ``stats`` reports
  what ``/proc`` says about the agent's process tree and ``None`` for what the kernel would
  only know inside a cgroup (the memory limit, OOM kills).
* **pause / resume** are SIGSTOP / SIGCONT of every process in the agent's tree (repeated until
  no process in it is still running, so a fork in between cannot escape); a process the user
  had stopped on purpose is continued by resume too.
* **stop** freezes the tree, then SIGKILLs it; the home directory stays, so ``start`` brings the
  sandbox back with its files. **destroy** also removes ``<state_dir>/<id>``.
* **recover** re-adopts agents from ``agent.json`` (pid and start time, so a reused pid is not
  mistaken for the agent).
* Not implemented, so callers see the capability as absent: ``Retargetable`` (the warm pool
  stays off) and ``DiskAccounting`` (the free-space floor counts only the host's free space).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from voidrun_server import ids
from voidrun_server.agent_launch import agent_argv
from voidrun_server.drivers.base import (
    DriverError,
    DriverTimeoutError,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    SandboxStats,
)

# The namespace driver's deadline rules: timeouts and host errors in the driver's exception tree.
from voidrun_server.drivers.common import operation
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.ready import wait_until_ready

HOST_ROOTFS = Path("/")
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    cpu_ns: int
    rss_bytes: int


def _read_proc(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # comm may hold spaces and parentheses
    ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)
    return _Proc(pid, int(fields[1]), fields[0].decode(), ticks * _TICK_NS, int(fields[21]) * _PAGE)


def process_tree(root: int) -> list[_Proc]:
    """``root`` and every live descendant of it (a snapshot of ``/proc``)."""
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    procs = [proc for pid in pids if (proc := _read_proc(pid)) is not None]
    children: dict[int, list[_Proc]] = {}
    found = {p.pid: p for p in procs}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    if root not in found:
        return []
    tree, todo = [], [found[root]]
    while todo:
        proc = todo.pop()
        if proc.state not in ("Z", "X"):
            tree.append(proc)
        todo.extend(children.get(proc.pid, []))
    return tree


def _signal_all(procs: Sequence[_Proc], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def freeze_tree(root: int, deadline: float) -> list[_Proc]:
    """SIGSTOP the tree until every member is stopped and no new one appeared; returns it."""
    while True:
        tree = process_tree(root)
        running = [p for p in tree if p.state not in ("T", "t")]
        if not running:
            return tree
        _signal_all(running, signal.SIGSTOP)
        if time.monotonic() > deadline:
            raise DriverTimeoutError("could not stop every process of the sandbox")
        time.sleep(0.001)


class HostDriver:
    """The real agent as a host process per sandbox; see the module docstring (NOT isolation)."""

    name = "host (tests only, no isolation)"

    def __init__(
        self,
        state_dir: Path,
        *,
        agent_mount: Path,
        python: Sequence[str] = (sys.executable,),
        ready_timeout: float = 10.0,
        op_timeout: float = 30.0,
    ) -> None:
        """``agent_mount`` holds the agent package as ``voidrun_agent`` (``copy_agent``)."""
        self.state_dir = state_dir.resolve()
        self.state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        self._mount = agent_mount
        self._python = tuple(python)
        self._ready_timeout = ready_timeout
        self._op_timeout = op_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    # -- layout ------------------------------------------------------------------------------

    def run_dir(self, sandbox_id: str) -> Path:
        if not ids.is_id(sandbox_id):
            raise DriverError("invalid sandbox id", "expected 24 lowercase hex digits")
        return self.state_dir / sandbox_id

    def home(self, sandbox_id: str) -> Path:
        """The sandbox's working directory and ``HOME`` (a host directory)."""
        return self.run_dir(sandbox_id) / "home"

    def _socket(self, sandbox_id: str) -> Path:
        return self.run_dir(sandbox_id) / "agent.sock"

    def _agent(self, sandbox_id: str) -> ProcessRef | None:
        """The agent process, if it still runs (or is stopped by pause)."""
        try:
            data = json.loads((self.run_dir(sandbox_id) / "agent.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        ref = ProcessRef.from_json(data)
        return ref if ref is not None and ref.alive() else None

    def _info(self, sandbox_id: str) -> SandboxInfo:
        socket = self._socket(sandbox_id)
        if not self.run_dir(sandbox_id).is_dir():
            return SandboxInfo(SandboxState.GONE, socket, None, None)
        agent = self._agent(sandbox_id)
        if agent is None:
            return SandboxInfo(SandboxState.STOPPED, socket, None, os.geteuid())
        stat = _read_proc(agent.pid)
        paused = stat is not None and stat.state in ("T", "t")
        state = SandboxState.PAUSED if paused else SandboxState.RUNNING
        return SandboxInfo(state, socket, agent.pid, os.geteuid())

    # -- blocking work (worker threads) -------------------------------------------------------

    def _launch(self, sandbox_id: str, env: dict[str, str] | None) -> ProcessRef:
        run = self.run_dir(sandbox_id)
        env_file = run / "env.json"
        if env is not None:
            env_file.write_text(json.dumps({"HOME": str(self.home(sandbox_id)), **env}))
        self._socket(sandbox_id).unlink(missing_ok=True)
        argv = agent_argv(
            str(self._socket(sandbox_id)),
            str(self._mount),
            env_file=str(env_file),
            python=self._python,
        )
        with (run / "agent.log").open("ab") as log:
            child = subprocess.Popen(
                argv,
                cwd=self.home(sandbox_id),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                start_new_session=True,
            )
        self._children[sandbox_id] = child
        ref = ProcessRef.of(child.pid)
        if ref is None:
            raise DriverError("the agent exited at once", self._log_tail(sandbox_id))
        (run / "agent.json").write_text(json.dumps(ref.to_json()))
        return ref

    def _kill(self, sandbox_id: str, deadline: float) -> None:
        """Freeze the agent's tree, SIGKILL all of it, and reap the agent."""
        agent = self._agent(sandbox_id)
        if agent is not None:
            tree = freeze_tree(agent.pid, deadline)
            _signal_all([p for p in tree if p.pid != agent.pid], signal.SIGKILL)
            agent.kill(signal.SIGKILL)
            while agent.alive():
                if time.monotonic() > deadline:
                    raise DriverTimeoutError("the agent did not die")
                time.sleep(0.001)
        child = self._children.pop(sandbox_id, None)
        if child is not None:
            child.wait()
        (self.run_dir(sandbox_id) / "agent.json").unlink(missing_ok=True)

    def _log_tail(self, sandbox_id: str) -> str:
        try:
            return (self.run_dir(sandbox_id) / "agent.log").read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    # -- Driver --------------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        if spec.rootfs != HOST_ROOTFS:
            raise DriverError(
                "the host driver cannot run images",
                f"its agent sees the host's root file system, not {spec.rootfs}",
            )
        run = self.run_dir(spec.sandbox_id)
        async with self._lock(spec.sandbox_id):
            with operation("create", self._op_timeout + self._ready_timeout):
                try:
                    run.mkdir()
                except FileExistsError:
                    raise SandboxStateError(f"sandbox {spec.sandbox_id} already exists") from None
                done = False
                try:
                    self.home(spec.sandbox_id).mkdir()
                    info = await self._boot(spec.sandbox_id, dict(spec.env))
                    done = True
                    return info
                finally:
                    if not done:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(self._remove, spec.sandbox_id)

    async def start(self, sandbox_id: str) -> SandboxInfo:
        async with self._lock(sandbox_id):
            with operation("start", self._op_timeout + self._ready_timeout):
                current = self._existing(sandbox_id)
                if current.state is SandboxState.RUNNING:
                    return current
                if current.state is SandboxState.PAUSED:
                    raise SandboxStateError("sandbox is paused", "resume it instead")
                return await self._boot(sandbox_id, None)

    async def stop(self, sandbox_id: str) -> None:
        async with self._lock(sandbox_id):
            with operation("stop", self._op_timeout) as deadline:
                self._existing(sandbox_id)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._kill, sandbox_id, deadline)

    async def destroy(self, sandbox_id: str) -> None:
        async with self._lock(sandbox_id):
            with operation("destroy", self._op_timeout), anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove, sandbox_id)
        self._locks.pop(sandbox_id, None)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        return await anyio.to_thread.run_sync(self._info, sandbox_id)

    async def recover(self) -> dict[str, SandboxInfo]:
        found = {}
        for entry in await anyio.to_thread.run_sync(os.listdir, self.state_dir):
            if ids.is_id(entry):
                found[entry] = await self.inspect(entry)
        return found

    # -- Pausable, Observable ------------------------------------------------------------------

    async def pause(self, sandbox_id: str) -> None:
        async with self._lock(sandbox_id):
            with operation("pause", self._op_timeout) as deadline:
                agent = self._running_agent(sandbox_id)
                await anyio.to_thread.run_sync(freeze_tree, agent.pid, deadline)

    async def resume(self, sandbox_id: str) -> None:
        async with self._lock(sandbox_id):
            with operation("resume", self._op_timeout):
                agent = self._running_agent(sandbox_id)
                tree = await anyio.to_thread.run_sync(process_tree, agent.pid)
                _signal_all(tree, signal.SIGCONT)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        agent = self._running_agent(sandbox_id)
        tree = await anyio.to_thread.run_sync(process_tree, agent.pid)
        return SandboxStats(
            memory_bytes=sum(p.rss_bytes for p in tree),
            memory_limit_bytes=None,  # nothing limits it
            cpu_usage_ns=sum(p.cpu_ns for p in tree),  # of the processes alive now
            pids=len(tree),
            oom_kills=None,  # only a cgroup counts these
        )

    # -- helpers -------------------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> anyio.Lock:
        return self._locks.setdefault(sandbox_id, anyio.Lock())

    def _existing(self, sandbox_id: str) -> SandboxInfo:
        info = self._info(sandbox_id)
        if info.state is SandboxState.GONE:
            raise SandboxNotFoundError(f"no sandbox {sandbox_id} on this node")
        return info

    def _running_agent(self, sandbox_id: str) -> ProcessRef:
        self._existing(sandbox_id)
        agent = self._agent(sandbox_id)
        if agent is None:
            raise SandboxStateError("sandbox is stopped")
        return agent

    def _remove(self, sandbox_id: str) -> None:
        self._kill(sandbox_id, time.monotonic() + self._op_timeout)
        shutil.rmtree(self.run_dir(sandbox_id), ignore_errors=True)

    async def _boot(self, sandbox_id: str, env: dict[str, str] | None) -> SandboxInfo:
        """Start the agent and wait until it accepts; on failure leave it stopped."""
        agent = await anyio.to_thread.run_sync(self._launch, sandbox_id, env)
        try:
            with anyio.fail_after(self._ready_timeout):
                await wait_until_ready(
                    self._socket(sandbox_id), owner_uid=os.geteuid(), alive=agent.alive
                )
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                deadline = time.monotonic() + self._op_timeout
                await anyio.to_thread.run_sync(self._kill, sandbox_id, deadline)
            if isinstance(exc, TimeoutError | DriverError):
                raise DriverError(
                    "the agent did not become ready", self._log_tail(sandbox_id)
                ) from exc
            raise
        return SandboxInfo(SandboxState.RUNNING, self._socket(sandbox_id), agent.pid, os.geteuid())
