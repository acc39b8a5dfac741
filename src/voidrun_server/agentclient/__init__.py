"""Async client for the in-sandbox agent (``voidrun_server.agent``).

::

    async with AgentClient(socket_path, connect_timeout=5) as agent:
        result = await agent.exec("echo hi", timeout=30)
        async with agent.exec_stream("make") as stream:
            async for event in stream:
                ...
"""

from voidrun_server.agent.protocol import PROTOCOL_VERSION

from ._client import AgentClient
from ._errors import (
    AgentConnectionError,
    AgentError,
    AgentOperationError,
    AgentProtocolError,
    AgentRequestTooLargeError,
    AgentResponseTooLargeError,
    AgentVersionError,
)
from ._procs import OpStream, Output, ProcessInfo, ProcessOps, ShellResult, TerminalInfo
from ._streams import ExecExit, ExecOutput, ExecResult, ExecStream, FileDownload

__all__ = [
    "PROTOCOL_VERSION",
    "AgentClient",
    "AgentConnectionError",
    "AgentError",
    "AgentOperationError",
    "AgentProtocolError",
    "AgentRequestTooLargeError",
    "AgentResponseTooLargeError",
    "AgentVersionError",
    "ExecExit",
    "ExecOutput",
    "ExecResult",
    "ExecStream",
    "FileDownload",
    "OpStream",
    "Output",
    "ProcessInfo",
    "ProcessOps",
    "ShellResult",
    "TerminalInfo",
]
