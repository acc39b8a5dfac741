"""``voidrun-server node`` (the node daemon) and ``nodes list|drain`` (against the database).

Kept out of ``main.py``; importing this module registers the commands.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from .. import __version__, hostclaims, logs, serverlock
from ..errors import NotFoundError, VoidRunError
from ..store.repos import nodes as repo
from .main import _settings, _with_session, app, console, err

nodes_app = typer.Typer(
    help="The node daemons of a fleet (docs/scale-out.md).", no_args_is_help=True
)
app.add_typer(nodes_app, name="nodes")


@app.command()
def node() -> None:
    """Run a node daemon: sandboxes of this host behind the internal API and tunnel."""
    import uvicorn

    from ..node.daemon import create_node_app, node_id_of

    settings = _settings()
    logs.configure(settings.log_level)
    if not settings.node_token_value:
        err.print("[red]Cannot start:[/red] VOIDRUN_NODE_TOKEN is required for a node")
        raise typer.Exit(2)
    try:
        serverlock.hold(settings.data_dir, "voidrun-server node")
        hostclaims.claim(settings, "voidrun-server node")
    except VoidRunError as exc:
        err.print(f"[red]Cannot start:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"[bold]voidrun-server {__version__}[/bold] node {node_id_of(settings)} on "
        f"{settings.resolved_node_url}/internal/v1, tunnel port {settings.resolved_tunnel_port} "
        f"(data: {settings.data_dir})"
    )
    uvicorn.run(
        create_node_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="uvloop",
        access_log=False,
    )


@nodes_app.command("list")
def nodes_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list.")] = False,
) -> None:
    """Every node: id, url, state, sandboxes, capacity, last heartbeat."""

    async def work(session: AsyncSession) -> list[dict[str, object]]:
        return [
            {
                "id": row.id,
                "url": row.url,
                "tunnel": row.tunnel,
                "state": row.state,
                "sandboxes": row.sandbox_count,
                "maxSandboxes": row.max_sandboxes,
                "cpu": row.cpu,
                "committedCpu": row.committed_cpu,
                "memMb": row.mem_mb,
                "committedMemMb": row.committed_mem_mb,
                "diskMb": row.disk_mb,
                "labels": row.labels,
                "images": row.images,
                "epoch": row.epoch,
                "lastHeartbeat": row.last_heartbeat.isoformat(),
                "startedAt": row.started_at.isoformat(),
            }
            for row in await repo.all_nodes(session)
        ]

    rows = _with_session(work)
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("id", "url", "state", "sandboxes", "cpu", "mem MiB", "last heartbeat")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["url"]),
            str(r["state"]),
            f"{r['sandboxes']}/{r['maxSandboxes']}",
            f"{r['committedCpu']}/{r['cpu']}",
            f"{r['committedMemMb']}/{r['memMb']}",
            str(r["lastHeartbeat"]),
        )
    console.print(table)


@nodes_app.command("drain")
def nodes_drain(node_id: str) -> None:
    """No new placements on NODE_ID; its sandboxes keep running until they end."""

    async def work(session: AsyncSession) -> None:
        if not await repo.set_state(session, node_id, repo.DRAINING):
            raise NotFoundError("No such node", node_id)

    _with_session(work)
    console.print(f"Node {node_id} is draining: no new sandboxes are placed there.")


@nodes_app.command("ready")
def nodes_ready(node_id: str) -> None:
    """End a drain: NODE_ID takes new sandboxes again (a silent node still turns suspect)."""

    async def work(session: AsyncSession) -> None:
        if not await repo.set_state(session, node_id, repo.READY):
            raise NotFoundError("No such node", node_id)

    _with_session(work)
    console.print(f"Node {node_id} takes new sandboxes again.")
