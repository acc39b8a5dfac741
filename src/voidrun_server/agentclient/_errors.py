"""Exceptions raised by the agent client.

::

    AgentError
     ├── AgentConnectionError     cannot reach the agent, or the connection broke / was closed
     ├── AgentProtocolError       the agent sent something this client does not understand
     │    └── AgentVersionError   the agent speaks another protocol version
     ├── AgentRequestTooLargeError  a request this client was asked to send is too large
     ├── AgentRequestFinished     data for a request the agent has already answered
     ├── AgentResponseTooLargeError an answer went past a cap of this client (request dropped)
     └── AgentOperationError      the agent refused or failed one request (``code``, ``message``)

``AgentOperationError`` and the two ``TooLarge`` errors leave the connection usable; the
others mean it is gone.
"""

from __future__ import annotations


class AgentError(Exception):
    pass


class AgentConnectionError(AgentError):
    pass


class AgentProtocolError(AgentError):
    pass


class AgentRequestTooLargeError(AgentError):
    """Raised before sending: the connection stays usable."""


class AgentRequestFinished(AgentError):
    """Raised to a sender whose request was answered meanwhile: the connection stays usable."""


class AgentResponseTooLargeError(AgentError):
    """The request was cancelled; the connection stays usable (a huge directory is no attack)."""


class AgentVersionError(AgentProtocolError):
    def __init__(self, path: str, agent_version: object, client_version: int) -> None:
        super().__init__(
            f"the agent at {path} speaks protocol version {agent_version!r}, but this server"
            f" speaks version {client_version}: the sandbox runs an agent from another release;"
            " restart the sandbox so it starts this server's agent"
        )
        self.agent_version = agent_version
        self.client_version = client_version


class AgentOperationError(AgentError):
    """``code`` is one of the ``voidrun_server.agent.protocol`` error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
