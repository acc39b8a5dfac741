"""The nodes table: registration, heartbeats, failure states, placement with a row lock.

Times are the database's clock (``now()``), so replicas and nodes with skewed clocks agree on
who missed a heartbeat. Committed resources are recounted from the sandbox rows under the node's
row lock, so they never drift and two replicas placing at once see each other's reservations.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import Node, Sandbox
from ..types import utcnow

READY, SUSPECT, LOST, DRAINING = "ready", "suspect", "lost", "draining"
# sandbox statuses that hold a node's resources (stopped ones keep their disk and come back)
HOLDING = ("running", "paused", "stopped")


async def db_now(session: AsyncSession) -> datetime:
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        value = (await session.execute(select(func.now()))).scalar_one()
        assert isinstance(value, datetime)
        return value
    return utcnow()


async def register(session: AsyncSession, node: Node) -> int:
    """Insert or take over the row of ``node.id`` with a new epoch (returned)."""
    now = await db_now(session)
    row = await session.get(Node, node.id, with_for_update=True)
    if row is None:
        node.epoch = 1
        node.state, node.last_heartbeat, node.started_at = READY, now, now
        session.add(node)
        return 1
    columns = ("url", "tunnel", "cpu", "mem_mb", "disk_mb", "max_sandboxes", "labels", "images")
    for column in columns:
        setattr(row, column, getattr(node, column))
    row.epoch += 1
    row.state = DRAINING if row.state == DRAINING else READY
    row.last_heartbeat = row.started_at = now
    return row.epoch


async def heartbeat(
    session: AsyncSession, node_id: str, epoch: int, images: list[str] | None = None
) -> bool:
    """False when the row is another epoch's now (another process took the id over);
    ``images``: the ids of the images it holds now."""
    now = await db_now(session)
    row = await session.get(Node, node_id, with_for_update=True)
    if row is None or row.epoch != epoch:
        return False
    row.last_heartbeat = now
    if images is not None and images != row.images:
        row.images = images
    row.sandbox_count, row.committed_cpu, row.committed_mem_mb = await committed(session, node_id)
    if row.state in (SUSPECT, LOST):
        row.state = READY
    return True


async def hold_image(session: AsyncSession, node_id: str, image_id: str) -> None:
    """Note at once that ``node_id`` holds ``image_id`` now (copied there), before the next
    heartbeat would."""
    row = await session.get(Node, node_id, with_for_update=True)
    if row is not None and row.images is not None and image_id not in row.images:
        row.images = sorted([*row.images, image_id])


async def all_nodes(session: AsyncSession) -> Sequence[Node]:
    return (await session.execute(select(Node).order_by(Node.id))).scalars().all()


async def get(session: AsyncSession, node_id: str) -> Node | None:
    return await session.get(Node, node_id)


async def set_state(session: AsyncSession, node_id: str, state: str) -> bool:
    result = await session.execute(update(Node).where(Node.id == node_id).values(state=state))
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class Transitions:
    suspect: list[str]
    lost: list[str]


async def detect(session: AsyncSession, suspect_after: float, lost_after: float) -> Transitions:
    """Ready/draining nodes silent for ``suspect_after`` s become suspect; any silent for
    ``lost_after`` s become lost. Returns the ids that changed."""
    now = await db_now(session)
    out = Transitions([], [])
    for row in (await session.execute(select(Node).with_for_update())).scalars():
        silent = (now - row.last_heartbeat).total_seconds()
        if row.state != LOST and silent >= lost_after:
            row.state = LOST
            out.lost.append(row.id)
        elif row.state in (READY, DRAINING) and silent >= suspect_after:
            row.state = SUSPECT
            out.suspect.append(row.id)
    return out


async def committed(session: AsyncSession, node_id: str) -> tuple[int, int, int]:
    """(sandboxes, cpu, mem MiB) the rows hold on ``node_id``."""
    query = select(
        func.count(Sandbox.id),
        func.coalesce(func.sum(Sandbox.cpu), 0),
        func.coalesce(func.sum(Sandbox.mem), 0),
    ).where(Sandbox.node_id == node_id, Sandbox.status.in_(HOLDING))
    count, cpu, mem = (await session.execute(query)).one()
    return int(count), int(cpu), int(mem)


def has_room(row: Node, used: tuple[int, int, int], cpu: int, mem_mb: int) -> bool:
    """Whether ``row``, holding ``used`` (sandboxes, cpu, mem MiB), fits one more sandbox."""
    count, used_cpu, used_mem = used
    return (
        count + 1 <= row.max_sandboxes
        and used_cpu + cpu <= row.cpu
        and used_mem + mem_mb <= row.mem_mb
    )


def fits(row: Node, cpu: int, mem_mb: int) -> bool:
    """Whether one more sandbox fits ``row`` by the counts it was read with (a view: the
    placement checks again under the row lock)."""
    used = (row.sandbox_count, row.committed_cpu, row.committed_mem_mb)
    return has_room(row, used, cpu, mem_mb)


def load(row: Node) -> float:
    return max(
        row.committed_cpu / max(row.cpu, 1),
        row.committed_mem_mb / max(row.mem_mb, 1),
        row.sandbox_count / max(row.max_sandboxes, 1),
    )


async def place(
    session: AsyncSession,
    *,
    cpu: int,
    mem_mb: int,
    fresh_within: float,
    region: str = "",
    image_id: str | None = None,
    sample: int = 3,
    skip: Sequence[str] = (),
    prefer: str | None = None,
) -> Node | None:
    """Reserve room on a node for one sandbox, in the caller's transaction (which must insert
    the sandbox row with ``node_id`` before it commits): ready nodes with a fresh heartbeat
    (and the region label, if asked; holding ``image_id``, if given), ``prefer`` first (the
    node a create already started booting on), then the least loaded of ``sample`` sampled,
    each checked again under its row lock. None: no node has room."""
    rows = candidates(
        await fresh(session, fresh_within), region=region, image_id=image_id, skip=skip
    )
    picked = least_loaded(rows, sample)
    picked.sort(key=lambda row: row.id != prefer)  # stable: the rest keep their order
    for candidate in picked:
        locked = await session.get(Node, candidate.id, with_for_update=True, populate_existing=True)
        if locked is None or locked.state != READY:
            continue
        count, used_cpu, used_mem = await committed(session, locked.id)
        if not has_room(locked, (count, used_cpu, used_mem), cpu, mem_mb):
            continue
        locked.sandbox_count = count + 1
        locked.committed_cpu = used_cpu + cpu
        locked.committed_mem_mb = used_mem + mem_mb
        return locked
    return None


def candidates(
    rows: Sequence[Node], *, region: str, image_id: str | None, skip: Sequence[str] = ()
) -> list[Node]:
    """The nodes of ``rows`` a sandbox could go to (region label, image held, not skipped)."""
    return [
        row
        for row in rows
        if row.id not in skip
        and in_region(row, region)
        and (image_id is None or row.images is None or image_id in row.images)
    ]


def in_region(row: Node, region: str) -> bool:
    """Whether ``row`` carries the ``region`` label asked for (any node when none is)."""
    return not region or row.labels.get("region") == region


def least_loaded(rows: Sequence[Node], sample: int = 3) -> list[Node]:
    """Best of ``sample`` sampled by committed/total first, then the others by load."""
    shuffled = list(rows)
    random.shuffle(shuffled)
    return sorted(shuffled[:sample], key=load) + sorted(shuffled[sample:], key=load)


async def fresh(session: AsyncSession, fresh_within: float) -> list[Node]:
    """Ready nodes that heartbeat within the last ``fresh_within`` seconds, by id."""
    since = await db_now(session) - timedelta(seconds=fresh_within)
    query = select(Node).where(Node.state == READY, Node.last_heartbeat >= since)
    return list((await session.execute(query.order_by(Node.id))).scalars())


async def node_of(session: AsyncSession, sandbox_id: str) -> str | None:
    query = select(Sandbox.node_id).where(Sandbox.id == sandbox_id)
    return (await session.execute(query)).scalar_one_or_none()


async def sandboxes_on(session: AsyncSession, node_id: str) -> Sequence[Sandbox]:
    query = select(Sandbox).where(Sandbox.node_id == node_id)
    return (await session.execute(query)).scalars().all()
