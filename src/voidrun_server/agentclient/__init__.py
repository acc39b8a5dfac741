"""Async client for the in-sandbox agent (``voidrun_server.agent``).

::

    async with AgentClient(socket_path, connect_timeout=5) as agent:
        result = await agent.exec("echo hi", timeout=30)
        async with agent.exec_stream("make") as stream:
            async for event in stream:
                ...
"""

from voidrun_server.agent.protocol import (
    BAD_REQUEST,
    IO_ERROR,
    IS_A_DIRECTORY,
    MAX_PAYLOAD_SIZE,
    NOT_A_DIRECTORY,
    NOT_A_FILE,
    NOT_FOUND,
    PERMISSION_DENIED,
    PORT_CLOSED,
    PROTOCOL_VERSION,
    SLOW_CONSUMER,
    SPAWN_FAILED,
    TOO_MANY_REQUESTS,
    UNKNOWN_OP,
)

from ._client import AgentClient
from ._errors import (
    AgentConnectionError,
    AgentError,
    AgentOperationError,
    AgentProtocolError,
    AgentRequestFinished,
    AgentRequestTooLargeError,
    AgentResponseTooLargeError,
    AgentVersionError,
)
from ._ports import PortStream
from ._procs import OpStream, Output, ProcessInfo, ProcessOps, ShellResult, TerminalInfo
from ._streams import ExecExit, ExecOutput, ExecResult, ExecStream, FileDownload
from ._tunnel import TunnelRefusedError, open_tunnel

# The refusal codes of ``AgentOperationError.code``, and the largest chunk one frame carries:
# the server uses these through the client, never the agent's protocol module.
__all__ = [
    "TunnelRefusedError",
    "open_tunnel",
    "BAD_REQUEST",
    "IO_ERROR",
    "IS_A_DIRECTORY",
    "MAX_PAYLOAD_SIZE",
    "NOT_A_DIRECTORY",
    "NOT_A_FILE",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "PORT_CLOSED",
    "PROTOCOL_VERSION",
    "SLOW_CONSUMER",
    "SPAWN_FAILED",
    "TOO_MANY_REQUESTS",
    "UNKNOWN_OP",
    "AgentClient",
    "AgentConnectionError",
    "AgentError",
    "AgentOperationError",
    "AgentProtocolError",
    "AgentRequestFinished",
    "AgentRequestTooLargeError",
    "AgentResponseTooLargeError",
    "AgentVersionError",
    "ExecExit",
    "ExecOutput",
    "ExecResult",
    "ExecStream",
    "FileDownload",
    "OpStream",
    "PortStream",
    "Output",
    "ProcessInfo",
    "ProcessOps",
    "ShellResult",
    "TerminalInfo",
]
