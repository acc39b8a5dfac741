"""One image build's progress and log lines, kept in memory on the server (or node) that runs
the build, for ``GET /api/images/{id}`` and the build's SSE log (``services/image_builds.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import anyio

from ..images.progress import BuildProgress

LOG_LINES = 1000


@dataclass
class BuildLog:
    """One build's progress and log lines, for readers that poll or follow."""

    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    total: int = 0  # lines ever added (readers keep their position in this count)
    progress: int = 0
    status: str = "building"
    error: str | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.total += 1
        self._wake()

    def report(self, update: BuildProgress) -> None:
        self.progress = min(99, int(100 * update.done / max(1, update.total)))
        self.add(f"[{update.step}] {update.detail}".rstrip())

    def finish(self, status: str, error: str | None = None) -> None:
        self.status, self.error = status, error
        self.progress = 100 if status == "ready" else self.progress
        self._wake()

    def since(self, position: int) -> tuple[list[str], int]:
        """Lines after ``position`` (those still kept) and the new position."""
        missed = self.total - position
        kept = list(self.lines)[-missed:] if 0 < missed else []
        return kept, self.total

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()
