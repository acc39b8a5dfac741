"""The sandbox state machine (CONTRACT §C.5, reconciled): which verb is allowed from which state,
and what each one asks of the driver.

Stored states are the seed's: running, paused, stopped, error, killed, deleted. Transitions of one
sandbox are serialised by a per-sandbox lock; the row is updated only after the driver succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"
    KILLED = "killed"
    DELETED = "deleted"


class Action(StrEnum):
    """What the driver must do for a verb in a given state."""

    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    START = "start"


@dataclass(frozen=True)
class Verb:
    name: str
    expected: str  # for the wrong-state message: "sandbox is not <expected> (current status: X)"
    actions: dict[Status, Action]
    message: str


VERBS: dict[str, Verb] = {
    "stop": Verb(
        "stop",
        "running",
        {Status.RUNNING: Action.STOP, Status.PAUSED: Action.STOP},
        "Sandbox stopped",
    ),
    "pause": Verb("pause", "running", {Status.RUNNING: Action.PAUSE}, "Sandbox paused"),
    "sleep": Verb("sleep", "running", {Status.RUNNING: Action.PAUSE}, "Sandbox snapshotted"),
    "resume": Verb("resume", "paused", {Status.PAUSED: Action.RESUME}, "Sandbox resumed"),
    "wake": Verb(
        "wake",
        "paused or stopped",
        {Status.PAUSED: Action.RESUME, Status.STOPPED: Action.START},
        "Sandbox restored",
    ),
    "start": Verb(
        "start",
        "stopped",
        {Status.STOPPED: Action.START, Status.ERROR: Action.START, Status.KILLED: Action.START},
        "Sandbox started",
    ),
}

# Data-plane calls wake a sleeping sandbox first (CONTRACT §D.3 #14).
AUTO_WAKE: dict[Status, Action | None] = {
    Status.RUNNING: None,
    Status.PAUSED: Action.RESUME,
    Status.STOPPED: Action.START,
}


def action_for(verb: Verb, status: Status, sdk_dialect: bool) -> Action | None:
    """The driver action, or None when the verb is not allowed from ``status``.

    SDK clients see ``paused`` as ``snapshotted``, and the later spec lets ``start`` act on a
    snapshotted sandbox, so for them ``start`` on a paused sandbox resumes it.
    """
    if sdk_dialect and verb.name == "start" and status is Status.PAUSED:
        return Action.RESUME
    return verb.actions.get(status)


def present(status: str, sdk_dialect: bool) -> str:
    """The status name a caller sees (CONTRACT decision 1)."""
    if sdk_dialect and status in (Status.PAUSED, Status.STOPPED):
        return "snapshotted"
    return status
