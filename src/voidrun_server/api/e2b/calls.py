"""One in-sandbox call (``Call``) and the RPC table's entries (``Rpc``), served through the
Connect framing of ``connect.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from ...services.accounts import Principal
from ...services.e2b_files import E2BFiles
from ...services.e2b_processes import E2BProcesses, Spawned
from . import connect
from .connect import Message, RpcError
from .errors import rpc_of


@dataclass
class Call:
    caller: Principal  # acts for the sandbox's org
    sandbox_id: str
    user: str | None  # from envd's Basic authorization (the SDK's ``user``)
    processes: E2BProcesses
    files: E2BFiles
    started: Spawned | None = None  # what Start started (killed if its deadline passes)


UnaryFn = Callable[[Call, Message], Awaitable[Message]]
StreamFn = Callable[[Call, Message], AsyncIterator[Message]]
ClientFn = Callable[[Call, AsyncIterator[Message]], Awaitable[Message]]


@dataclass(frozen=True)
class Rpc:
    kind: str  # unary, stream, client
    fn: Any
    keepalive: Message | None = None

    @classmethod
    def unary(cls, fn: UnaryFn) -> Rpc:
        return cls("unary", fn)

    @classmethod
    def stream(cls, fn: StreamFn, keepalive: Message) -> Rpc:
        return cls("stream", fn, keepalive)

    @classmethod
    def client(cls, fn: ClientFn) -> Rpc:
        return cls("client", fn)

    async def serve(
        self, call: Call, scope: Scope, receive: Receive, send: Send, limit: int
    ) -> RpcError | None:
        if self.kind == "unary":
            fn: UnaryFn = self.fn

            async def unary(message: Message) -> Message:
                return await fn(call, message)

            await connect.unary(scope, receive, send, unary, rpc_of, limit)
            return None
        if self.kind == "client":
            client_fn: ClientFn = self.fn

            async def client(messages: AsyncIterator[Message]) -> Message:
                return await client_fn(call, messages)

            await connect.client_stream(scope, receive, send, client, rpc_of, limit)
            return None
        stream_fn: StreamFn = self.fn
        assert self.keepalive is not None

        def stream(message: Message) -> AsyncIterator[Message]:
            return stream_fn(call, message)

        return await connect.server_stream(
            scope, receive, send, stream, rpc_of, self.keepalive, limit
        )
