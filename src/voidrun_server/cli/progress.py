"""The progress bar of the CLI's long image work (``images build``, ``images import``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..images.progress import BuildProgress


@contextmanager
def build_progress(console: Console, label_width: int) -> Iterator[Callable[[BuildProgress], None]]:
    """A bar on ``console`` while the block runs; the yielded function reports one step."""
    columns = (
        TextColumn(f"[bold]{{task.description:<{label_width}}}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[detail]}", justify="left"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("prepare", total=1, detail="")

        def report(update: BuildProgress) -> None:
            bar.update(
                task,
                description=update.step,
                completed=update.done,
                total=update.total,
                detail=update.detail.strip()[:60],
            )

        yield report
