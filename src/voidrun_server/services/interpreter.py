"""The stateful code interpreter of a sandbox: started on demand, reached through the proxy.

The program (``voidrun_server.interpreter``, run by the image's ``python3``) serves E2B's
code-interpreter protocol on port ``PORT`` of the sandbox's loopback. ``ensure_running`` makes
sure it does: it asks ``GET /health`` through the preview proxy's connections into the sandbox
(``ProxyService.send``: the driver's port opener or the agent relay, never the host network);
if nothing listens, it writes the program into the sandbox through the agent and starts it as
a background command of the sandbox's user, then waits until it answers. One start at a time
per sandbox (concurrent callers wait for it and find it running). A paused sandbox keeps it
(the processes are frozen, not gone); a stopped one starts it again on the next call.

A port taken by anything that does not answer like the interpreter, or answers garbage, is a
clear 502 (``UpstreamError``), never a hang: every probe and the start have deadlines.
``execute`` runs one cell and collects its NDJSON lines into an ``Execution`` (for the MCP
``run_code`` tool); the E2B dispatcher proxies the sandbox's answers as they are instead.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore

from .. import interpreter as program
from ..agentclient import AgentClient
from ..drivers.base import PortClosedError
from ..errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .accounts import Principal
from .agents import Refusal
from .locks import KeyedLocks
from .proxy import ProxyService, Target
from .sandboxes import Running, SandboxService

__all__ = ["PORT", "Execution", "ExecutionError", "InterpreterService"]

log = logging.getLogger(__name__)

PORT = program.PORT
VERSION_HEADER = b"x-voidrun-interpreter"
PROBE_TIMEOUT = 5.0
START_TIMEOUT = 60.0
POLL = 0.1
MAX_OUTPUT = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 300.0
TAKEN = f"Port {PORT} in the sandbox is taken"
TAKEN_DETAILS = (
    f"another program listens on port {PORT} and does not answer like the code interpreter; "
    "stop it to use run_code"
)
START_REFUSED = Refusal(failure="Could not start the code interpreter")


@dataclass
class ExecutionError:
    name: str
    value: str
    traceback: str


@dataclass
class Execution:
    """One cell's outcome: what it printed, its results (display data and the cell's value,
    one field per MIME type as on the wire: ``text``, ``html``, ``png``, …, ``is_main_result``)
    and its error, if it raised."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    error: ExecutionError | None = None
    execution_count: int | None = None

    @property
    def text(self) -> str | None:
        """The cell's value as text (its main result's ``text``), as the SDKs' ``.text``."""
        for result in self.results:
            if result.get("is_main_result") and isinstance(result.get("text"), str):
                return str(result["text"])
        return None


class InterpreterService:
    def __init__(self, sandboxes: SandboxService, proxy: ProxyService) -> None:
        self.sandboxes = sandboxes
        self.proxy = proxy
        self._starting = KeyedLocks()
        self._files = program.program_files()
        self._version = program.version()
        self._install_dir = f"/var/lib/voidrun/interpreter/{self._version}"

    # -- running ---------------------------------------------------------------------------------

    async def ensure_running(self, caller: Principal, sandbox_id: str) -> Target:
        """The interpreter's port of a running sandbox of ``caller``'s org, answering (woken
        and started if need be). The E2B dispatcher calls this before it proxies to the port."""
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        target = Target(sandbox_id, running.row.org_id, PORT, public=False)
        if await self._probe(target) == self._version:
            return target
        async with self._starting.hold(sandbox_id):
            found = await self._probe(target)  # somebody may have started it meanwhile
            if found is not None and found != self._version:
                found = await self._retire(running, target, found)
            if found is None:
                await self._start(running, target)
        return target

    async def _probe(self, target: Target) -> str | None:
        """The version of the interpreter answering, None if nothing listens; a port that
        answers otherwise raises."""
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                response = await self.proxy.send(target, b"GET", b"/health", _headers(), None)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                TAKEN, f"port {PORT} did not answer within {PROBE_TIMEOUT:g}s"
            ) from exc
        except PortClosedError:
            return None
        except UpstreamError as exc:
            if isinstance(exc.__cause__, httpcore.ConnectError):
                return None
            raise UpstreamError(TAKEN, f"{TAKEN_DETAILS} ({exc.details})") from exc
        except httpcore.ProtocolError as exc:  # a body that breaks off or is not HTTP
            raise UpstreamError(TAKEN, f"{TAKEN_DETAILS} ({exc})") from exc
        version = next((v for name, v in response.headers if name.lower() == VERSION_HEADER), None)
        if response.status == 200 and version is not None:
            return version.decode(errors="replace")
        raise UpstreamError(TAKEN, f"{TAKEN_DETAILS} (GET /health: {response.status})")

    async def _retire(self, running: Running, target: Target, found: str) -> str | None:
        """Another release's interpreter (the server was upgraded): stop the command that runs
        it so this one's starts; one this server did not start is left alone and used."""

        async def stop(client: AgentClient) -> int:
            stopped = 0
            for info in await client.procs.list_commands():
                if info.running and f"{program.PACKAGE}.server" in info.command:
                    await client.procs.kill_command(info.pid)
                    stopped += 1
            return stopped

        stopped = await self.sandboxes.agents.run(
            running.row.id, running.agent_socket, stop, deadline=30.0, refused=START_REFUSED
        )
        if not stopped:
            log.info("sandbox %s runs interpreter %s, not started by us", running.row.id, found)
            return found
        answering: str | None = found
        with anyio.move_on_after(START_TIMEOUT):
            while True:  # until its port is free (or the deadline: then it is used as it is)
                try:
                    answering = await self._probe(target)
                except (UpstreamError, UpstreamTimeoutError):  # resets while it shuts down
                    answering = found
                if answering is None:
                    break
                await anyio.sleep(POLL)
        return answering

    async def _start(self, running: Running, target: Target) -> None:
        user = await self.sandboxes.image_users.effective(running.row, None)
        workdir = running.row.workdir or "/"
        package_dir = f"{self._install_dir}/{program.PACKAGE}"
        command = " ".join(
            [
                "exec python3 -I -c",
                shlex.quote(program.bootstrap_code(self._install_dir)),
                f"--port {PORT} --cwd",
                shlex.quote(workdir),
            ]
        )

        async def launch(client: AgentClient) -> int:
            for name, data in self._files.items():
                await client.write_file(f"{package_dir}/{name}", data, durable=False)
            info = await client.procs.run_command(command, cwd=workdir, user=user)
            return info.pid

        pid = await self.sandboxes.agents.run(
            running.row.id, running.agent_socket, launch, deadline=30.0, refused=START_REFUSED
        )
        log.info("started the code interpreter in sandbox %s (pid %d)", running.row.id, pid)
        with anyio.move_on_after(START_TIMEOUT):
            checked = anyio.current_time()
            while True:
                if await self._probe(target) == self._version:
                    return
                if anyio.current_time() - checked >= 1.0:
                    checked = anyio.current_time()
                    await self._still_running(running, pid)
                await anyio.sleep(POLL)
        raise UpstreamTimeoutError(
            "The code interpreter did not start",
            f"port {PORT} not answering after {START_TIMEOUT:g}s",
        )

    async def _still_running(self, running: Running, pid: int) -> None:
        async def look(client: AgentClient) -> bool:
            infos = await client.procs.list_commands()
            return any(info.pid == pid and info.running for info in infos)

        alive = await self.sandboxes.agents.run(
            running.row.id, running.agent_socket, look, deadline=30.0, refused=START_REFUSED
        )
        if not alive:
            raise UpstreamError(
                "The code interpreter did not start",
                "its process exited (does the image have python3 ≥ 3.9?)",
            )

    # -- one cell -------------------------------------------------------------------------------

    async def execute(
        self,
        caller: Principal,
        sandbox_id: str,
        code: str,
        language: str | None = None,
        context_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the cell's limit
        env: dict[str, str] | None = None,
    ) -> Execution:
        """Run ``code`` in the sandbox's default context of ``language`` (python if neither is
        given) or in context ``context_id``. Past ``timeout`` seconds the cell is interrupted
        (the sandbox's server sees the connection close) and this raises a 504."""
        if language and context_id:
            raise InvalidInputError("Give language or context_id, not both")
        target = await self.ensure_running(caller, sandbox_id)
        body = json.dumps(
            {"code": code, "language": language, "context_id": context_id, "env_vars": env}
        ).encode()
        headers = [
            *_headers(),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        execution = Execution()
        with self.proxy.limits.hold(target), anyio.move_on_after(timeout) as scope:
            response = await self.proxy.send(target, b"POST", b"/execute", headers, _once(body))
            try:
                if response.status != 200:
                    _refused(response.status, await _read_some(response))
                await self._collect(response, execution, target)
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
        if scope.cancelled_caught:
            raise DeadlineExceededError(
                "Execution timed out", f"after {timeout:g}s; the cell was interrupted"
            )
        return execution

    async def _collect(
        self, response: httpcore.Response, execution: Execution, target: Target
    ) -> None:
        pending: list[bytes] = []  # the line being received (a PNG's may be megabytes)
        total = 0
        try:
            async for chunk in response.aiter_stream():
                total += len(chunk)
                if total > MAX_OUTPUT:
                    raise UpstreamError(
                        "The code interpreter sent too much", f"over {MAX_OUTPUT} bytes"
                    )
                self.proxy.touch(target)
                if b"\n" not in chunk:
                    pending.append(chunk)
                    continue
                *lines, rest = b"".join([*pending, chunk]).split(b"\n")
                pending = [rest]
                for line in lines:
                    if line.strip() and _apply(execution, line):
                        return
        except httpcore.ProtocolError as exc:
            raise UpstreamError("The code interpreter's answer broke off", str(exc)) from exc
        except httpcore.NetworkError as exc:
            raise UpstreamError("The code interpreter's answer broke off", str(exc)) from exc
        raise UpstreamError("The code interpreter's answer broke off", "no end_of_execution line")


def _apply(execution: Execution, raw: bytes) -> bool:
    """Adds one line to ``execution``; True at ``end_of_execution``."""
    try:
        line = json.loads(raw)
        kind = line["type"]
        if kind == "end_of_execution":
            return True
        if kind in ("stdout", "stderr"):
            getattr(execution, kind).append(str(line["text"]))
        elif kind == "result":
            execution.results.append({k: v for k, v in line.items() if k != "type"})
        elif kind == "error":
            execution.error = ExecutionError(
                str(line["name"]), str(line["value"]), str(line.get("traceback", ""))
            )
        elif kind == "number_of_executions":
            execution.execution_count = int(line["execution_count"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError(
            "The code interpreter answered garbage", f"line {raw[:200]!r}: {exc!r}"
        ) from exc
    return False


def _refused(status: int, text: str) -> None:
    if status == 400:
        raise InvalidInputError(text or "Invalid code execution request")
    if status == 404:
        raise NotFoundError(text or "Context not found")
    raise UpstreamError("The code interpreter failed", f"{status}: {text}")


async def _read_some(response: httpcore.Response, limit: int = 4096) -> str:
    data = b""
    async for chunk in response.aiter_stream():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit].decode(errors="replace").strip()


def _headers() -> list[tuple[bytes, bytes]]:
    return [(b"host", f"127.0.0.1:{PORT}".encode()), (b"accept", b"*/*")]


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
