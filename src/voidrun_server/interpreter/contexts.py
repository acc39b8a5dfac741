"""The contexts of one interpreter: a default one per language (made on first use), and those
made by ``POST /contexts``. Executions on one context run one at a time, in arrival order
as far as the lock is fair; a waiting request keeps its client's connection alive."""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import wire

LANGUAGES = ("python", "bash", "javascript")
ALIASES = {
    "python3": "python",
    "py": "python",
    "sh": "bash",
    "shell": "bash",
    "js": "javascript",
    "node": "javascript",
}
POLL = 1.0


class ContextError(Exception):
    """Refused before any output: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Context:
    id: str
    language: str
    cwd: str
    runtime: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}


def normalize(language: str | None) -> str:
    name = (language or "python").strip().lower()
    name = ALIASES.get(name, name)
    if name not in LANGUAGES:
        raise ContextError(
            400, f"unsupported language {language!r}; supported: {', '.join(LANGUAGES)}"
        )
    return name


def _runtime(language: str, cwd: str) -> Any:
    if language == "python":
        from .kernels import PythonContext

        return PythonContext(cwd)
    if language == "javascript":
        from .node import NodeContext

        return NodeContext(cwd)
    from .shell import BashContext

    return BashContext(cwd)


class Contexts:
    def __init__(self, default_cwd: str) -> None:
        self.default_cwd = default_cwd
        self._table: dict[str, Context] = {}
        self._defaults: dict[str, str] = {}
        self._lock = threading.Lock()  # the table
        self._making = {name: threading.Lock() for name in LANGUAGES}  # one default each

    def create(self, language: str | None, cwd: str | None) -> Context:
        name = normalize(language)
        where = cwd or self.default_cwd
        if not os.path.isabs(where) or not os.path.isdir(where):
            raise ContextError(400, f"cwd {where!r} is not an existing absolute directory")
        try:
            runtime = _runtime(name, where)
        except Exception as exc:
            raise ContextError(500, f"could not start a {name} context: {exc}") from exc
        context = Context(uuid.uuid4().hex, name, where, runtime)
        with self._lock:
            self._table[context.id] = context
        return context

    def default(self, language: str | None) -> Context:
        name = normalize(language)
        with self._making[name]:
            with self._lock:
                found = self._table.get(self._defaults.get(name, ""))
            if found is not None:
                return found
            context = self.create(name, None)
            with self._lock:
                self._defaults[name] = context.id
            return context

    def get(self, context_id: str) -> Context:
        with self._lock:
            context = self._table.get(context_id)
        if context is None:
            raise ContextError(404, f"Context {context_id} not found")
        return context

    def list(self) -> list[Context]:
        with self._lock:
            return list(self._table.values())

    def delete(self, context_id: str) -> None:
        context = self.get(context_id)
        with self._lock:
            self._table.pop(context_id, None)
            for name, known in list(self._defaults.items()):
                if known == context_id:
                    del self._defaults[name]
        context.runtime.interrupt()
        with context.lock:
            context.runtime.shutdown()

    def restart(self, context_id: str) -> None:
        context = self.get(context_id)
        context.runtime.interrupt()
        with context.lock:
            context.runtime.restart()

    def shutdown(self) -> None:
        for context in self.list():
            try:
                context.runtime.shutdown()
            except Exception:
                pass

    def execute(self, context: Context, code: str, env: dict[str, str], emit: wire.Emit) -> None:
        """Wait for the context (keepalives while waiting), run the cell, emit its lines."""
        while not context.lock.acquire(timeout=POLL):
            emit(wire.KEEPALIVE)
        try:
            context.runtime.execute(code, env, emit)
        except wire.ContextDiedError as exc:
            emit(
                wire.error(
                    "ContextRestarting",
                    f"{exc}; the context was restarted and its state is lost",
                )
            )
            try:
                context.runtime.restart()
            except Exception as again:
                emit(wire.error("ContextRestarting", f"restart failed: {again}"))
        finally:
            context.lock.release()
