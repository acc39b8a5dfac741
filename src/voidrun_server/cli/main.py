"""``voidrun-server``: run the server and administer orgs, users and keys.

Account commands open the database directly (same data dir), so they work whether or not a server
is running. The ``sandboxes`` commands (``cli/sandboxes.py``) are an API client of a running one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from .. import __version__, datadir, hostclaims, logs, serverlock
from ..config import Settings
from ..errors import VoidRunError
from ..services import accounts
from ..store import db

T = TypeVar("T")
app = typer.Typer(
    help="Self-hosted VoidRun-compatible sandbox server.",
    no_args_is_help=True,
    add_completion=False,
)
orgs_app = typer.Typer(help="Manage organizations.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
images_app = typer.Typer(help="Build and list sandbox images.", no_args_is_help=True)
app.add_typer(images_app, name="images")

console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        err.print(f"[red]Invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


def _with_session(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one committed transaction on a migrated database."""
    settings = _settings()
    datadir.prepare(settings)

    async def run() -> T:
        engine = db.create_engine(settings.resolved_database_url)
        try:
            await db.migrate(engine)
            async with db.transaction(db.session_factory(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except VoidRunError as exc:
        err.print(f"[red]Error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _print_dashboard(settings: Settings) -> None:
    from ..api.dashboard import missing_assets

    console.print(f"Dashboard: {settings.external_base_url}/ (sign in with an API key)")
    if missing_assets(settings.dashboard_root):
        err.print(
            "[yellow]The dashboard's assets are missing:[/yellow] run `make install` "
            "(npm ci in dashboard/) or set VOIDRUN_DASHBOARD_DIR"
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (VOIDRUN_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (VOIDRUN_PORT).")] = None,
) -> None:
    """Apply migrations and serve the API."""
    import uvicorn

    from ..api import http_server
    from ..api.app import create_app

    settings = _settings()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    logs.configure(settings.log_level)
    try:  # held until the process ends (its sandboxes stay; `purge` refuses meanwhile)
        serverlock.hold(settings.data_dir, "voidrun-server serve")
        # its uid area, subnet and cgroup names: no other live server on this host has them
        # (an API replica, VOIDRUN_ROLE=api, runs no sandboxes and claims nothing)
        if settings.role != "api":
            hostclaims.claim(settings, "voidrun-server serve")
    except VoidRunError as exc:
        err.print(f"[red]Cannot start:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(
        f"[bold]voidrun-server {__version__}[/bold] on http://{settings.host}:{settings.port}/api "
        f"(data: {settings.data_dir})"
    )
    if settings.bootstrap_key_file.exists() and not settings.bootstrap_api_key:
        console.print(f"API key of user 'admin': {settings.bootstrap_key_file}")
    if settings.dashboard_enabled:
        _print_dashboard(settings)
    files_before, files = http_server.raise_open_file_limit()
    limits = http_server.HttpLimits(
        max_head_bytes=settings.max_request_head_bytes,
        head_timeout=settings.request_head_timeout_seconds,
        max_connections=settings.max_connections or http_server.default_max_connections(files),
    )
    logging.getLogger(__name__).info(
        "open-file limit %d (was %d); at most %d connections, request heads of %d bytes within "
        "%g s, keep-alive %d s",
        files,
        files_before,
        limits.max_connections,
        limits.max_head_bytes,
        limits.head_timeout,
        settings.keep_alive_timeout_seconds,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="uvloop",
        http=http_server.limited_protocol(limits),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        access_log=False,
    )


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    _with_session(_noop)
    console.print("Database is up to date.")


async def _noop(_session: AsyncSession) -> None:
    return None


@app.command()
def config() -> None:
    """Print every setting, its current value and what it does."""
    table = Table("variable", "value", "meaning", show_lines=False)
    for name, value, description in _settings().describe():
        table.add_row(name, value, description)
    console.print(table)


@orgs_app.command("create")
def orgs_create(name: str) -> None:
    """Create an organization."""

    async def work(session: AsyncSession) -> str:
        return (await accounts.create_org(session, name)).id

    console.print(f"Created org '{name}' ({_with_session(work)}).")
    console.print(f"Next: voidrun-server users create --org {name} --email you@example.com")


@users_app.command("create")
def users_create(
    org: Annotated[str, typer.Option(help="Org name.")],
    email: Annotated[str, typer.Option(help="The user's email.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
) -> None:
    """Create a user (or reuse one with that email) and add them to an org."""

    async def work(session: AsyncSession) -> str:
        return (
            await accounts.create_user(session, await accounts.org_named(session, org), email, name)
        ).id

    console.print(f"User {email} ({_with_session(work)}) is a member of '{org}'.")
    console.print(f"Next: voidrun-server keys create --org {org} --name my-key --email {email}")


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Org name.")],
    name: Annotated[str, typer.Option(help="Key name (1..25 characters).")],
    email: Annotated[
        str | None, typer.Option(help="Owner of the key; default: the org's owner.")
    ] = None,
) -> None:
    """Create an API key and print it on its own line (it is not shown again)."""

    async def work(session: AsyncSession) -> str:
        the_org = await accounts.org_named(session, org)
        user_id = await accounts.key_owner(session, the_org, email)
        return (await accounts.create_key(session, the_org.id, user_id, name)).plain

    plain = _with_session(work)
    err.print(f"API key '{name}' for org '{org}' (store it now, it is not shown again):")
    print(plain)


@keys_app.command("list")
def keys_list(
    org: Annotated[str, typer.Option(help="Org name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines for scripts.")] = False,
) -> None:
    """List an org's API keys (never the keys themselves)."""

    async def work(session: AsyncSession) -> list[tuple[str, str, str, str, str]]:
        the_org = await accounts.org_named(session, org)
        return [
            (
                k.id,
                k.name,
                k.masked_key,
                "active" if k.is_active else "inactive",
                k.last_used_at.isoformat() if k.last_used_at else "never",
            )
            for k in await accounts.list_keys(session, the_org.id)
        ]

    rows = _with_session(work)
    if as_json:
        fields = ("id", "name", "maskedKey", "state", "lastUsedAt")
        for row in rows:
            print(json.dumps(dict(zip(fields, row, strict=True))))
        return
    table = Table("id", "name", "key", "state", "last used")
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*row)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, org: Annotated[str, typer.Option(help="Org name.")]) -> None:
    """Delete an API key; it stops working at once."""

    async def work(session: AsyncSession) -> None:
        await accounts.revoke_key(session, (await accounts.org_named(session, org)).id, key_id)

    _with_session(work)
    console.print(f"Revoked {key_id}.")


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@images_app.command("build")
def images_build(
    name: Annotated[str, typer.Argument(help="Image to build; only 'code' is built-in.")] = "code",
    force: Annotated[bool, typer.Option(help="Rebuild even if a complete build exists.")] = False,
) -> None:
    """Build a system image (cached: returns at once when already built)."""

    from ..images.build import ImageBuildError, build_code_image
    from ..services.images import SYSTEM_IMAGES
    from .progress import build_progress

    settings = _settings()
    if name not in SYSTEM_IMAGES:
        err.print(f"[red]Unknown image {name!r}.[/red] Built-in images: {', '.join(SYSTEM_IMAGES)}")
        raise typer.Exit(2)
    with build_progress(err, 16) as report:
        try:
            built = build_code_image(
                settings.images_root,
                tag=SYSTEM_IMAGES[name],
                mirror=settings.debian_mirror,
                progress=report,
                force=force,
            )
        except ImageBuildError as exc:
            err.print(f"[red]Image build failed:[/red] {exc}")
            raise typer.Exit(1) from exc
    console.print(
        f"Image [bold]{built.name}:{built.tag}[/bold] ready at {built.rootfs} "
        f"({built.size_bytes / 2**20:.0f} MiB). Start the server with: voidrun-server serve"
    )


from . import images as _images  # noqa: E402,F401  registers `images import`
from . import nodes as _nodes  # noqa: E402,F401  registers `node`, `nodes list|drain`
from . import purge as _purge  # noqa: E402,F401  registers `purge`
from . import quota as _quota  # noqa: E402,F401  registers `orgs quota`
from . import sandboxes as _sandboxes  # noqa: E402,F401  registers `sandboxes …`
