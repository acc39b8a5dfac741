"""``process.Process`` on the wire (``services/e2b_processes.py`` does the work)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...services.e2b_processes import Spawned, StartSpec
from .calls import Call, Rpc
from .connect import Message, RpcError
from .protojson import Bytes, In, b64, enum_value, parse, unb64

SIGNALS = {"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9}
KEEPALIVE: Message = {"event": {"keepalive": {}}}


class Selector(In):
    pid: int | None = None
    tag: str | None = None


class Config(In):
    cmd: str
    args: list[str] = []
    envs: dict[str, str] = {}
    cwd: str | None = None


class Size(In):
    cols: int = 0
    rows: int = 0


class Pty(In):
    size: Size | None = None


class StartRequest(In):
    process: Config
    pty: Pty | None = None
    tag: str | None = None
    stdin: bool | None = None


class SelectRequest(In):
    process: Selector


class UpdateRequest(In):
    process: Selector
    pty: Pty | None = None


class InputRequest(In):
    process: Selector
    input: Bytes | None = None


class SignalRequest(In):
    process: Selector
    signal: int | str = 0


class StreamStart(In):
    process: Selector


class StreamData(In):
    input: Bytes | None = None


class StreamInputRequest(In):
    start: StreamStart | None = None
    data: StreamData | None = None


def _selected(call: Call, selector: Selector) -> Spawned:
    return call.processes.select(call.sandbox_id, selector.pid, selector.tag)


def _info(spawned: Spawned) -> Message:
    config: Message = {"cmd": spawned.cmd, "args": spawned.args, "envs": spawned.envs}
    if spawned.cwd:
        config["cwd"] = spawned.cwd
    info: Message = {"config": config, "pid": spawned.pid}
    if spawned.tag is not None:
        info["tag"] = spawned.tag
    return info


async def _events(call: Call, spawned: Spawned) -> AsyncIterator[Message]:
    """start, then data until it exits, then end. Attached before the start event, so an
    unknown process is a plain not-found."""
    channel = "pty" if spawned.terminal is not None else None
    async with call.processes.follow(call.caller, call.sandbox_id, spawned) as live:
        yield {"event": {"start": {"pid": spawned.pid}}}
        async for chunk in live.chunks():
            if chunk is not None:
                yield {"event": {"data": {channel or chunk.channel: b64(chunk.data)}}}
        result = live.result
    code = result.get("exitCode")
    code = code if isinstance(code, int) and not isinstance(code, bool) else -1
    end: Message = {"exitCode": code, "exited": True, "status": f"exit status {code}"}
    if result.get("timedOut"):
        end["error"] = "timed out"
    yield {"event": {"end": end}}


async def start(call: Call, message: Message) -> AsyncIterator[Message]:
    request = parse(StartRequest, message)
    size = request.pty.size if request.pty is not None else None
    spec = StartSpec(
        cmd=request.process.cmd,
        args=list(request.process.args),
        envs=dict(request.process.envs),
        cwd=request.process.cwd,
        tag=request.tag,
        stdin=request.stdin is True,
        user=call.user,
        pty=None
        if request.pty is None
        else (size.cols or 80, size.rows or 24)
        if size
        else (80, 24),
    )
    spawned = await call.processes.start(call.caller, call.sandbox_id, spec)
    call.started = spawned
    async for event in _events(call, spawned):
        yield event


async def connect(call: Call, message: Message) -> AsyncIterator[Message]:
    spawned = _selected(call, parse(SelectRequest, message).process)
    async for event in _events(call, spawned):
        yield event


async def list_processes(call: Call, message: Message) -> Message:
    found = await call.processes.list(call.caller, call.sandbox_id)
    return {"processes": [_info(s) for s in found]}


async def send_signal(call: Call, message: Message) -> Message:
    request = parse(SignalRequest, message)
    signal = enum_value(request.signal, SIGNALS)
    if signal not in (9, 15):
        raise RpcError("invalid_argument", "signal: SIGNAL_SIGKILL or SIGNAL_SIGTERM")
    await call.processes.kill(call.caller, call.sandbox_id, _selected(call, request.process))
    return {}


async def _write(call: Call, spawned: Spawned, given: Bytes | None) -> None:
    if given is None:
        return
    data = given.pty if given.pty is not None else given.stdin
    if data:
        await call.processes.write(call.caller, call.sandbox_id, spawned, unb64(data))


async def send_input(call: Call, message: Message) -> Message:
    request = parse(InputRequest, message)
    await _write(call, _selected(call, request.process), request.input)
    return {}


async def close_stdin(call: Call, message: Message) -> Message:
    spawned = _selected(call, parse(SelectRequest, message).process)
    await call.processes.write(call.caller, call.sandbox_id, spawned, b"", eof=True)
    return {}


async def update(call: Call, message: Message) -> Message:
    request = parse(UpdateRequest, message)
    size = request.pty.size if request.pty is not None else None
    if size is None:
        return {}
    spawned = _selected(call, request.process)
    await call.processes.resize(call.caller, call.sandbox_id, spawned, size.cols, size.rows)
    return {}


async def stream_input(call: Call, messages: AsyncIterator[Message]) -> Message:
    spawned: Spawned | None = None
    async for message in messages:
        request = parse(StreamInputRequest, message)
        if request.start is not None:
            spawned = _selected(call, request.start.process)
        elif request.data is not None:
            if spawned is None:
                raise RpcError("failed_precondition", "send the start event first")
            await _write(call, spawned, request.data.input)
    return {}


RPCS: dict[str, Rpc] = {
    "Start": Rpc.stream(start, KEEPALIVE),
    "Connect": Rpc.stream(connect, KEEPALIVE),
    "List": Rpc.unary(list_processes),
    "SendSignal": Rpc.unary(send_signal),
    "SendInput": Rpc.unary(send_input),
    "CloseStdin": Rpc.unary(close_stdin),
    "Update": Rpc.unary(update),
    "StreamInput": Rpc.client(stream_input),
}
