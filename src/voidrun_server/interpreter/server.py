"""The interpreter's HTTP server: E2B's code-interpreter protocol on the sandbox's loopback.

``POST /execute``         ``{code, context_id?, language?, env_vars?}`` -> NDJSON lines
                          (``wire.py``), chunked; ending with ``end_of_execution``
``POST /contexts``        ``{language?, cwd?}`` -> ``{id, language, cwd}``
``GET /contexts``         every context
``DELETE /contexts/{id}`` ``POST /contexts/{id}/restart``
``GET /health``           ``"OK"``, with ``X-VoidRun-Interpreter: <version>``

Refusals are plain-text bodies (the SDKs show them as they are): 400 bad request, 404 unknown
context, 413 body too large. A client that leaves mid-execution is noticed at the next line
or keepalive, and its cell is interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import wire
from .contexts import ContextError, Contexts

VERSION_HEADER = "X-VoidRun-Interpreter"
KEEPALIVE_EVERY = 5.0
MAX_BODY = 16 * 1024 * 1024


class ClientGoneError(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "voidrun-interpreter"
    # The head, the body and each line are separate writes: without this, Nagle's algorithm
    # and the peer's delayed ACK hold each reply ~40 ms.
    disable_nagle_algorithm = True
    contexts: Contexts
    version: str
    _last_write = 0.0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- routes ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        parts = path.strip("/").split("/")
        try:
            if method == "GET" and path == "/health":
                self._reply(200, b'"OK"', "application/json")
            elif method == "POST" and path == "/execute":
                self._execute(self._json())
            elif method == "POST" and path == "/contexts":
                body = self._json()
                made = self.contexts.create(_text(body, "language"), _text(body, "cwd"))
                self._reply_json(made.describe())
            elif method == "GET" and path == "/contexts":
                self._reply_json([c.describe() for c in self.contexts.list()])
            elif method == "DELETE" and len(parts) == 2 and parts[0] == "contexts":
                self._discard_body()
                self.contexts.delete(parts[1])
                self._reply(204, b"")
            elif method == "POST" and len(parts) == 3 and parts[::2] == ["contexts", "restart"]:
                self._discard_body()
                self.contexts.restart(parts[1])
                self._reply(204, b"")
            else:
                self._discard_body()
                self._reply(404, f"no route {method} {path}".encode())
        except ContextError as exc:
            self._reply(exc.status, str(exc).encode())
        except ClientGoneError:
            self.close_connection = True

    def _execute(self, body: dict[str, Any]) -> None:
        code = body.get("code")
        if not isinstance(code, str):
            raise ContextError(400, "code must be a string")
        context_id, language = _text(body, "context_id"), _text(body, "language")
        if context_id and language:
            raise ContextError(400, "Only one of context_id or language can be provided")
        env = body.get("env_vars") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise ContextError(400, "env_vars must map variable names to strings")
        context = self.contexts.get(context_id) if context_id else None
        if context is None:
            context = self.contexts.default(language)
        if context.language == "bash" and not all(_shell_name(k) for k in env):
            raise ContextError(400, "env_vars: not a shell variable name")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self._last_write = time.monotonic()
        try:
            self.contexts.execute(context, code, env, self._emit)
        except ClientGoneError:
            raise
        except Exception as exc:  # after the head: the stream still ends properly
            self._emit(wire.error("InterpreterError", f"{type(exc).__name__}: {exc}"))
        self._emit(wire.END)
        self._chunk(b"")

    # -- I/O ------------------------------------------------------------------------------------

    def _emit(self, line: wire.Line) -> None:
        # Runtimes offer a keepalive each second of silence; one in KEEPALIVE_EVERY goes out
        # (as E2B's server: a client's per-read timeout still sees a silent cell).
        now = time.monotonic()
        if line is wire.KEEPALIVE and now - self._last_write < KEEPALIVE_EVERY:
            return
        self._last_write = now
        self._chunk(wire.encode(line))

    def _chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as exc:
            raise ClientGoneError() from exc

    def _json(self) -> dict[str, Any]:
        raw = self._body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ContextError(400, f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ContextError(400, "body must be a JSON object")
        return body

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ContextError(400, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            self.close_connection = True
            raise ContextError(400, "bad Content-Length") from exc
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise ContextError(413, f"body over {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _discard_body(self) -> None:
        self._body()

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        try:
            self.send_response(status)
            self.send_header(VERSION_HEADER, self.version)
            if status != 204:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 204:
                self.wfile.write(body)
        except OSError as exc:
            raise ClientGoneError() from exc

    def _reply_json(self, value: Any) -> None:
        self._reply(200, json.dumps(value).encode(), "application/json")


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContextError(400, f"{key} must be a string")
    return value


def _shell_name(name: str) -> bool:
    return name.isidentifier() and name.isascii()


def main(argv: list[str] | None = None) -> int:
    from . import version

    parser = argparse.ArgumentParser(prog="voidrun-interpreter")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=49999)
    parser.add_argument("--cwd", default=os.getcwd())
    parser.add_argument("--no-prewarm", action="store_true")
    args = parser.parse_args(argv)
    contexts = Contexts(args.cwd)
    mine = version()
    handler = type("BoundHandler", (Handler,), {"contexts": contexts, "version": mine})
    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer((args.host, args.port), handler)
    httpd.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not args.no_prewarm:  # the first run_code should not wait for a kernel to start
        threading.Thread(target=_prewarm, args=(contexts,), daemon=True).start()
    print(f"voidrun-interpreter {mine} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        contexts.shutdown()
    return 0


def _prewarm(contexts: Contexts) -> None:
    try:
        contexts.default("python")
    except Exception as exc:
        print(f"prewarming the python context failed: {exc}", file=sys.stderr, flush=True)
