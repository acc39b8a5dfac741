"""What an image build tells its caller: progress reports, and the error it fails with.

Shared by the build steps (``images.build``) and the command runner (``images.chroot``), which
reports each line a command prints against the current step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

_STEPS = (
    "prepare",
    "debootstrap",
    "apt install",
    "npm install tsx",
    "configure",
    "verify",
    "shift ownership",
    "finalize",
)


class ImageBuildError(Exception):
    """An image could not be built; the message says what failed and what to do about it."""


@dataclass(frozen=True)
class BuildProgress:
    """One progress report; the CLI turns a stream of these into a progress bar."""

    step: str
    done: int
    total: int
    detail: str = ""


ProgressCallback = Callable[[BuildProgress], None]


class _Reporter:
    """Tracks the current step so streamed log lines can be reported against it."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._index = -1
        self._step = ""

    def step(self, step: str, detail: str = "") -> None:
        self._index = _STEPS.index(step)
        self._step = step
        self._emit(self._index, detail)

    def line(self, detail: str) -> None:
        self._emit(max(self._index, 0), detail)

    def done(self, detail: str) -> None:
        self._emit(len(_STEPS), detail)

    def _emit(self, done: int, detail: str) -> None:
        if self._callback is not None:
            self._callback(BuildProgress(self._step, done, len(_STEPS), detail))
