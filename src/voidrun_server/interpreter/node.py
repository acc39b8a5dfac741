"""A javascript context: one persistent ``node`` process running ``node_runner.js``.

Debian has no Jupyter kernel for JavaScript. The runner evaluates each cell in its own global
context, so globals and top-level declarations persist (``const``/``let`` too); a cell's value
(awaited if it is a promise) is its ``text/plain`` result, a throw its ``error`` with the
stack as traceback. Cells with top-level ``await`` run as an async function (their
declarations stay local to the cell). Output framing and interrupts are ``shell.PipeContext``'s.
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import wire
from .shell import PipeContext

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_runner.js")


class NodeContext(PipeContext):
    language = "javascript"
    name = "node"
    control = True

    def argv(self) -> list[str]:
        return ["node", RUNNER]

    def send(self, code: str, env: dict[str, str], marker: str) -> None:
        request = {"code": code, "env": env, "marker": marker}
        self._write(json.dumps(request).encode() + b"\n")

    def finish(self, status: int, reply: dict[str, Any] | None, emit: wire.Emit) -> None:
        reply = reply or {}
        result = reply.get("result")
        if isinstance(result, dict) and result:
            emit(wire.result(result, True))
        error = reply.get("error")
        if isinstance(error, dict):
            emit(
                wire.error(
                    str(error.get("name", "Error")),
                    str(error.get("value", "")),
                    str(error.get("traceback", "")),
                )
            )
