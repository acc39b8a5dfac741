"""``voidrun-server purge``: remove everything this data dir's server put on the host.

For uninstalling or resetting a node (docs/operations.md). Sandboxes deliberately outlive the
server (a restart re-adopts them), so stopping the server leaves them, their mounts, loop
devices, cgroups and network behind; this command tears all of it down, with the server
stopped. The database is not touched: a server started afterwards marks the rows of the
purged sandboxes ``killed``. Kept out of ``main.py``; importing this module registers it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Annotated

import typer

from .. import serverlock
from ..errors import ConflictError
from .main import _settings, app, console, err


def _progress(line: str) -> None:
    err.print(line, style="dim", soft_wrap=True, markup=False)


@app.command()
def purge(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Destroy every sandbox of this data dir (disks included) and the server's network, with
    the server stopped; report what was removed. The database is kept."""
    settings = _settings()
    if os.geteuid() != 0:
        err.print("[red]purge needs root[/red] (it unmounts and deletes sandboxes' host state)")
        raise typer.Exit(2)
    from ..drivers.namespace.purge import purge as purge_state_dir
    from ..drivers.namespace.state import SANDBOX_ID_RE
    from .purge_others import purge_other_isolations

    lock = None
    if settings.data_dir.exists():  # no data dir: nothing can run on it; sweep what is left
        try:
            lock = serverlock.hold(settings.data_dir, "voidrun-server purge")
        except ConflictError as exc:
            err.print(f"[red]Refusing to purge:[/red] {exc}. Stop the server first.")
            raise typer.Exit(1) from exc
    state_dir = settings.sandboxes_dir
    found = (
        [e.name for e in state_dir.iterdir() if SANDBOX_ID_RE.match(e.name)]
        if state_dir.is_dir()
        else []
    )
    if not yes:
        typer.confirm(
            f"Destroy the {len(found)} sandbox(es) under {state_dir} and every gvisor and "
            "microvm sandbox of this data dir, their disks included, and the server's bridge, "
            "nftables table and resolver?",
            abort=True,
        )
    try:  # gvisor and microvm sandboxes first: the namespace purge ends the shared network
        others, other_errors = purge_other_isolations(settings, _progress)
        result = purge_state_dir(
            state_dir, cgroup_parent=settings.cgroup_parent, progress=_progress
        )
        result.sandboxes[:0] = others
        result.errors[:0] = other_errors
    finally:
        if lock is not None:
            os.close(lock)
    if as_json:
        print(
            json.dumps(
                {
                    "sandboxes": result.sandboxes,
                    "removed": [[i.kind, i.name, i.detail] for i in result.removed],
                    "left": [[i.kind, i.name, i.detail] for i in result.left],
                    "errors": result.errors,
                }
            )
        )
    else:
        counts = Counter(item.kind for item in result.removed)
        summary = ", ".join(f"{n} {kind}(s)" for kind, n in sorted(counts.items()))
        console.print(
            f"Purged {len(result.sandboxes)} sandbox(es) under {state_dir}"
            + (f"; removed {summary}." if summary else "; nothing else was left on the host."),
            soft_wrap=True,
        )
        for item in result.removed:
            console.print(f"  removed {item}", soft_wrap=True, markup=False)
        for item in result.left:
            err.print(f"[red]  still there:[/red] {item}")
        for error in result.errors:
            err.print(f"[red]  failed:[/red] {error}")
    if not result.clean:
        raise typer.Exit(1)
