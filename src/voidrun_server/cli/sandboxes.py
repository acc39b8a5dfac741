"""``voidrun-server sandboxes list|exec|shell|kill``: an API client of a running server.

``--url`` defaults to ``http://VOIDRUN_HOST:VOIDRUN_PORT/api`` of this host's settings; the key
comes from ``--api-key`` / ``VOIDRUN_API_KEY``, else the server's bootstrap key
(``cli/client.py``). Importing this module registers the group on the app.

Exit codes: ``exec`` and ``shell`` exit with the remote command's (shell's) code, and with 125
when they fail themselves (server unreachable, bad key, unknown sandbox), as ``docker exec``
does; ``list`` and ``kill`` exit 1 on failure.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from .client import ApiError, Target, checked, default_url, resolve_key, session
from .main import _settings, app, console, err

sandboxes_app = typer.Typer(
    help="List sandboxes, run commands in them, open a shell, delete them (talks to a running "
    "server's API).",
    no_args_is_help=True,
)
app.add_typer(sandboxes_app, name="sandboxes")

CLIENT_FAILURE = 125  # exec/shell: the CLI failed, not the command (as docker exec)
STATUSES = ("running", "paused", "stopped", "error", "killed")
PAGE = 100

Url = Annotated[
    str | None,
    typer.Option("--url", help="API base URL (default: http://VOIDRUN_HOST:VOIDRUN_PORT/api)."),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="VOIDRUN_API_KEY",
        help="API key (default: the server's bootstrap key, where this user can read it).",
        show_default=False,
    ),
]


def target(url: str | None, api_key: str | None, failure: int = 1) -> Target:
    settings = _settings()
    try:
        key, source = resolve_key(api_key, settings)
    except ApiError as exc:
        fail(exc, failure)
    return Target((url or default_url(settings)).rstrip("/"), key, source)


def fail(exc: ApiError, code: int) -> NoReturn:
    err.print(f"[red]Error:[/red] {escape(str(exc))}")
    raise typer.Exit(code) from exc


def guarded(code: int, work: Callable[[], Any]) -> Any:
    try:
        return work()
    except ApiError as exc:
        fail(exc, code)


@sandboxes_app.command("list")
def list_sandboxes(
    status: Annotated[
        str | None,
        typer.Option(help=f"Only sandboxes in this status ({', '.join(STATUSES)})."),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Only sandboxes with label k=v (repeat: all match).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines for scripts.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """List the key's org's sandboxes, newest first."""
    if status is not None and status not in STATUSES:
        err.print(f"[red]Unknown status {status!r}.[/red] One of: {', '.join(STATUSES)}")
        raise typer.Exit(2)
    for pair in label or []:
        if "=" not in pair:
            err.print(f"[red]--label {pair!r} is not k=v.[/red]")
            raise typer.Exit(2)
    where = target(url, api_key)
    rows = guarded(1, lambda: list(_all(where, ",".join(label or []), status or "")))
    if as_json:
        for row in rows:
            print(json.dumps(row, separators=(",", ":")))
        return
    if not rows:
        filtered = " matching the filters" if status or label else ""
        console.print(f"No sandboxes{filtered} (create one with POST /api/sandboxes or an SDK).")
        return
    table = Table("id", "name", "status", "image", "cpu/mem", "age")
    table.columns[0].no_wrap = True
    now = datetime.now(UTC)
    for row in rows:
        table.add_row(
            str(row["id"]),
            escape(str(row.get("name", ""))),
            str(row.get("status", "")),
            escape(str(row.get("image", ""))),
            f"{row.get('cpu', '?')}/{row.get('mem', '?')} MiB",
            age(row.get("createdAt"), now),
        )
    console.print(table)


def _all(where: Target, labels: str, status: str = "") -> Iterator[dict[str, Any]]:
    """Every page of ``GET /sandboxes`` (the API pages by at most 100, and filters)."""
    with session(where) as client:
        page, pages = 1, 1
        while page <= pages:
            params: dict[str, str | int] = {"page": page, "limit": PAGE}
            if labels:
                params["labels"] = labels
            if status:
                params["status"] = status
            body = checked(where, client.get("/sandboxes", params=params))
            yield from body.get("data") or []
            pages = int((body.get("meta") or {}).get("totalPages") or 0)
            page += 1


def age(created: object, now: datetime) -> str:
    """``45s``, ``12m``, ``3h``, ``2d`` since ``created`` (an ISO 8601 string)."""
    try:
        then = datetime.fromisoformat(str(created))
    except ValueError:
        return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@sandboxes_app.command("exec")
def exec_command(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id.")],
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="CMD",
            help="The command: one argument is a shell line (bash -c), several are quoted.",
        ),
    ],
    stream: Annotated[
        bool, typer.Option(help="Print output as it comes (the SSE exec-stream route).")
    ] = False,
    timeout: Annotated[
        int, typer.Option(min=1, max=300, help="Seconds before the command is killed.")
    ] = 30,
    cwd: Annotated[str | None, typer.Option(help="Working directory in the sandbox.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="K=V (repeat).")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Run a command in a sandbox; print its stdout and stderr, exit with its exit code.

    Options go before `--`: `voidrun-server sandboxes exec --stream ID -- make test`.
    """
    line = command[0] if len(command) == 1 else shlex.join(command)
    body: dict[str, Any] = {"command": line, "timeout": timeout}
    if cwd:
        body["cwd"] = cwd
    if env:
        pairs = [pair.partition("=") for pair in env]
        if any(not sep or not key for key, sep, _ in pairs):
            err.print("[red]--env takes K=V.[/red]")
            raise typer.Exit(2)
        body["env"] = {key: value for key, _, value in pairs}
    where = target(url, api_key, CLIENT_FAILURE)
    from .streaming import exec_once, exec_streamed

    run = exec_streamed if stream else exec_once
    code = guarded(CLIENT_FAILURE, lambda: run(where, sandbox_id, body))
    raise typer.Exit(code)


@sandboxes_app.command("shell")
def shell(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id.")],
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Open a terminal in a sandbox (a PTY over its WebSocket); `exit` ends it.

    From a terminal: raw mode, resized with your window, restored on exit. With stdin not a
    terminal, its lines are typed into the shell, then `exit`.
    """
    where = target(url, api_key, CLIENT_FAILURE)
    from .terminal import run_shell

    raise typer.Exit(guarded(CLIENT_FAILURE, lambda: run_shell(where, sandbox_id)))


@sandboxes_app.command("kill")
def kill(
    sandbox_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Sandbox ids.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Delete sandboxes: their processes end and their files are removed."""
    where = target(url, api_key)

    def names() -> list[str]:
        with session(where) as client:
            return [
                str(checked(where, client.get(f"/sandboxes/{i}"), i)["data"].get("name", ""))
                for i in sandbox_ids
            ]

    found = guarded(1, names)
    listed = ", ".join(f"{i} ({n})" for i, n in zip(sandbox_ids, found, strict=True))
    if not yes:
        if not sys.stdin.isatty():
            err.print(f"[red]Not deleting {escape(listed)}:[/red] confirm with --yes.")
            raise typer.Exit(1)
        typer.confirm(f"Delete {listed}?", abort=True)

    def delete() -> None:
        with session(where) as client:
            for sandbox_id, name in zip(sandbox_ids, found, strict=True):
                checked(where, client.delete(f"/sandboxes/{sandbox_id}"), sandbox_id)
                console.print(f"Deleted sandbox {sandbox_id} ({escape(name)}).")

    guarded(1, delete)
