"""A Python context: one real Jupyter kernel (ipykernel), driven through ``jupyter_client``.

Variables, imports and the kernel's ``display()`` machinery persist between executions;
matplotlib figures come back as ``image/png`` results (ipykernel's inline backend). One
execution at a time (the caller holds the context's lock): its messages are told apart from
any stale ones of an interrupted execution by their parent message id.
"""

from __future__ import annotations

import json
import queue
import time
from typing import Any

from jupyter_client.manager import KernelManager

from . import wire

START_TIMEOUT = 60.0
POLL = 1.0  # seconds between liveness checks (and keepalives) while a cell runs
KERNEL_NAME = "python3"


class KernelDiedError(wire.ContextDiedError):
    pass


class PythonContext:
    language = "python"

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.km: Any = None
        self.kc: Any = None
        self.start()

    def start(self) -> None:
        km = KernelManager(kernel_name=KERNEL_NAME)
        km.start_kernel(cwd=self.cwd)
        kc = km.blocking_client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=START_TIMEOUT)
        except Exception:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            raise
        self.km, self.kc = km, kc

    def restart(self) -> None:
        self.shutdown()
        self.start()

    def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:
                pass
        self.km = self.kc = None

    def interrupt(self) -> None:
        if self.km is not None:
            try:
                self.km.interrupt_kernel()
            except Exception:
                pass

    def alive(self) -> bool:
        return self.km is not None and bool(self.km.is_alive())

    def execute(self, code: str, env: dict[str, str], emit: wire.Emit) -> None:
        """Run one cell, emitting its lines (not ``end_of_execution``). ``emit`` raises when
        the client is gone: the cell is then interrupted and the exception propagates."""
        if not self.alive():
            self.restart()
        restore = self._set_env(env) if env else None
        try:
            self._run(code, emit, silent=False)
        finally:
            if restore is not None and self.alive():
                try:
                    self._quiet(restore)
                except Exception:
                    pass

    # -- internals -----------------------------------------------------------------------------

    def _set_env(self, env: dict[str, str]) -> str:
        """Sets ``env`` in the kernel's ``os.environ``; returns the code that undoes it."""
        payload = json.dumps(env)
        keys = json.dumps(sorted(env))
        self._quiet(
            "import os as __vr_os, json as __vr_json\n"
            f"__vr_saved_env = {{k: __vr_os.environ.get(k) for k in __vr_json.loads({keys!r})}}\n"
            f"__vr_os.environ.update(__vr_json.loads({payload!r}))\n"
        )
        return (
            "for __vr_k, __vr_v in __vr_saved_env.items():\n"
            "    if __vr_v is None: __vr_os.environ.pop(__vr_k, None)\n"
            "    else: __vr_os.environ[__vr_k] = __vr_v\n"
            "del __vr_saved_env, __vr_os, __vr_json\n"
        )

    def _quiet(self, code: str) -> None:
        self._run(code, lambda line: None, silent=True)

    def _run(self, code: str, emit: wire.Emit, *, silent: bool) -> None:
        msg_id = self.kc.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=True
        )
        errored = False
        try:
            while True:
                try:
                    msg = self.kc.get_iopub_msg(timeout=POLL)
                except queue.Empty:
                    if not self.alive():
                        raise KernelDiedError("the Python kernel died") from None
                    emit(wire.KEEPALIVE)
                    continue
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg.get("msg_type"), msg.get("content", {})
                if kind == "status" and content.get("execution_state") == "idle":
                    return
                if kind == "execute_input":
                    emit(wire.count(int(content.get("execution_count") or 0)))
                elif kind == "stream":
                    name = "stderr" if content.get("name") == "stderr" else "stdout"
                    emit(wire.output(name, str(content.get("text", ""))))
                elif kind in ("display_data", "execute_result"):
                    emit(wire.result(dict(content.get("data", {})), kind == "execute_result"))
                elif kind == "error" and not errored:
                    errored = True
                    emit(
                        wire.error(
                            str(content.get("ename", "")),
                            str(content.get("evalue", "")),
                            "\n".join(content.get("traceback", [])),
                        )
                    )
        except BaseException:
            self.interrupt()
            self._drain(msg_id)
            raise

    def _drain(self, msg_id: str, within: float = 5.0) -> None:
        """After an interrupt: until the cell's kernel went idle, so the next one starts clean."""
        give_up = time.monotonic() + within
        while time.monotonic() < give_up and self.alive():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg.get("msg_type") == "status"
                and msg.get("content", {}).get("execution_state") == "idle"
            ):
                return
