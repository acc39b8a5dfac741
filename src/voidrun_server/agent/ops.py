"""The op table. A new capability is a new row here; the framing never changes.

A handler gets the shared context, its request's stream and the validated-as-JSON ``args``,
may send ``head``/``data`` frames through the stream, and returns the ``res`` body. Raising
``OpError`` turns into an ``err`` frame; nothing a handler raises can take the connection down.

Each family of ops lives in its own module, imported on the first call of one of its ops (an
idle agent has imported none of them: start-up time and memory are per sandbox). The table
names them, so the hello frame lists every op without importing anything.
"""

from __future__ import annotations

from .args import bad, env_map
from .protocol import BAD_REQUEST, UNKNOWN_OP, OpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict

    from .context import AgentContext
    from .stream import Handler, Stream


async def op_ping(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    return {}


async def op_env_set(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    """Merge variables into the defaults every later exec inherits (sandbox ``envVars``)."""
    if not isinstance(args.get("env"), dict):
        raise bad("'env' must be an object of strings")
    ctx.defaults.update(env_map(args))
    return {}


# op -> (module of its family, handler in it)
LAZY: Dict[str, tuple[str, str]] = {
    "exec": ("process", "op_exec"),
    "exec.stream": ("process", "op_exec_stream"),
    "file.read": ("files", "op_file_read"),
    "file.write": ("files", "op_file_write"),
    # --- file system ops (files API) ---
    "fs.list": ("fsops", "op_fs_list"),
    "fs.stat": ("fsops", "op_fs_stat"),
    "fs.mkdir": ("fsops", "op_fs_mkdir"),
    "fs.touch": ("fsops", "op_fs_touch"),
    "fs.chmod": ("fsops", "op_fs_chmod"),
    "fs.delete": ("fsops", "op_fs_delete"),
    "fs.copy": ("fsops", "op_fs_copy"),
    "fs.move": ("fsops", "op_fs_move"),
    "fs.du": ("fsquery", "op_fs_du"),
    "fs.search": ("fsquery", "op_fs_search"),
    "fs.headtail": ("fsquery", "op_fs_headtail"),
    "fs.compress": ("archive", "op_fs_compress"),
    "fs.extract": ("archive", "op_fs_extract"),
    "fs.watch": ("watch", "op_fs_watch"),
    # --- processes: background commands, shell sessions, PTYs ---
    "cmd.run": ("commands", "op_cmd_run"),
    "cmd.list": ("commands", "op_cmd_list"),
    "cmd.kill": ("commands", "op_cmd_kill"),
    "cmd.wait": ("commands", "op_cmd_wait"),
    "cmd.attach": ("commands", "op_cmd_attach"),
    "cmd.stdin": ("commands", "op_cmd_stdin"),
    "sh.create": ("shells", "op_sh_create"),
    "sh.exec": ("shells", "op_sh_exec"),
    "sh.exec.stream": ("shells", "op_sh_exec_stream"),
    "sh.input": ("shells", "op_sh_input"),
    "sh.resize": ("shells", "op_sh_resize"),
    "sh.close": ("shells", "op_sh_close"),
    "pty.create": ("pty", "op_pty_create"),
    "pty.list": ("pty", "op_pty_list"),
    "pty.attach": ("pty", "op_pty_attach"),
    "pty.input": ("pty", "op_pty_input"),
    "pty.resize": ("pty", "op_pty_resize"),
    "pty.buffer": ("pty", "op_pty_buffer"),
    "pty.close": ("pty", "op_pty_close"),
    # --- previews: a TCP connection to a port inside, relayed (drivers without setns) ---
    "port.connect": ("portconnect", "op_port_connect"),
    # --- a restored microvm snapshot becomes this sandbox (hostname, clock, RNG, env) ---
    "vm.identity": ("guest", "op_vm_identity"),
}


def resolve(op: str) -> Handler:
    """The handler of a lazily imported op (imports its family's module)."""
    module, name = LAZY[op]
    family = __import__(f"{__package__}.{module}", fromlist=(name,))
    handler: Handler = getattr(family, name)
    return handler


def _lazy(op: str) -> Handler:
    async def first_call(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
        handler = OPS[op] = resolve(op)  # later calls go straight to it
        return await handler(ctx, stream, args)

    return first_call


OPS: Dict[str, Handler] = {
    "ping": op_ping,
    "env.set": op_env_set,
    **{op: _lazy(op) for op in LAZY},
}


def lookup(op: object, args: object) -> Handler:
    """The handler for a request: its op's, or one that refuses it with the reason."""
    handler = OPS.get(op) if isinstance(op, str) else None
    if handler is None:
        return _refuse(OpError(UNKNOWN_OP, f"unknown op {op!r}; known: {sorted(OPS)}"))
    if not isinstance(args, dict):
        return _refuse(OpError(BAD_REQUEST, "'args' must be an object"))
    return handler


def _refuse(error: OpError) -> Handler:
    async def handler(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
        raise error

    return handler
