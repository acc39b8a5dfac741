"""``voidrun-server orgs quota``: show and change an org's quotas.

Kept out of ``main.py`` so that file stays about running the server; importing this module
registers the command on the ``orgs`` group.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from ..services import accounts, quotas
from .main import _settings, _with_session, console, orgs_app


@orgs_app.command("quota")
def orgs_quota(
    org: Annotated[str, typer.Argument(help="Org name.")],
    max_sandboxes: Annotated[
        int | None, typer.Option("--max-sandboxes", min=0, help="Most sandboxes (not deleted).")
    ] = None,
    cpu: Annotated[
        int | None, typer.Option("--cpu", min=0, help="Total CPUs of running/paused sandboxes.")
    ] = None,
    mem_mb: Annotated[
        int | None, typer.Option("--mem-mb", min=0, help="Total MiB of running/paused ones.")
    ] = None,
    disk_mb: Annotated[
        int | None, typer.Option("--disk-mb", min=0, help="Total disk MiB (not deleted).")
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Back to the server defaults (VOIDRUN_ORG_MAX_*).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show an org's quotas and usage; options change them (applies to the next request)."""
    settings = _settings()

    async def work(session: AsyncSession) -> dict[str, dict[str, int | bool]]:
        the_org = await accounts.org_named(session, org)
        changes = (max_sandboxes, cpu, mem_mb, disk_mb)
        if reset or any(value is not None for value in changes):
            await quotas.set_quota(
                session,
                the_org,
                max_sandboxes=max_sandboxes,
                cpu=cpu,
                mem_mb=mem_mb,
                disk_mb=disk_mb,
                reset=reset,
            )
        quota = quotas.effective(settings, the_org)
        used = await quotas.usage(session, the_org.id)
        overrides = (
            the_org.quota_max_sandboxes,
            the_org.quota_cpu,
            the_org.quota_mem_mb,
            the_org.quota_disk_mb,
        )
        rows = zip(
            ("sandboxes", "cpu", "memMb", "diskMb"),
            (quota.max_sandboxes, quota.cpu, quota.mem_mb, quota.disk_mb),
            (used.sandboxes, used.cpu, used.mem_mb, used.disk_mb),
            overrides,
            strict=True,
        )
        return {
            name: {"limit": limit, "used": in_use, "default": override is None}
            for name, limit, in_use, override in rows
        }

    report = _with_session(work)
    if as_json:
        print(json.dumps(report))
        return
    table = Table("quota", "limit", "used", "source", title=f"org '{org}'")
    for name, row in report.items():
        source = "server default" if row["default"] else "org override"
        table.add_row(name, str(row["limit"]), str(row["used"]), source)
    console.print(table)
