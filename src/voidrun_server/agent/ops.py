"""The op table. A new capability is a new row here; the framing never changes.

A handler gets the shared context, its request's stream and the validated-as-JSON ``args``,
may send ``head``/``data`` frames through the stream, and returns the ``res`` body. Raising
``OpError`` turns into an ``err`` frame; nothing a handler raises can take the connection down.
"""

from __future__ import annotations

from typing import Any, Dict

from .args import bad, env_map
from .commands import COMMAND_OPS
from .context import AgentContext
from .files import op_file_read, op_file_write
from .fsops import FS_OPS
from .process import op_exec, op_exec_stream
from .pty import PTY_OPS
from .shells import SHELL_OPS
from .stream import Handler, Stream


async def op_ping(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    return {}


async def op_env_set(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    """Merge variables into the defaults every later exec inherits (sandbox ``envVars``)."""
    if not isinstance(args.get("env"), dict):
        raise bad("'env' must be an object of strings")
    ctx.defaults.update(env_map(args))
    return {}


OPS: Dict[str, Handler] = {
    "ping": op_ping,
    "env.set": op_env_set,
    "exec": op_exec,
    "exec.stream": op_exec_stream,
    "file.read": op_file_read,
    "file.write": op_file_write,
    # --- file system ops (files API) ---
    **FS_OPS,
    # --- processes: background commands, shell sessions, PTYs ---
    **COMMAND_OPS,
    **SHELL_OPS,
    **PTY_OPS,
}
