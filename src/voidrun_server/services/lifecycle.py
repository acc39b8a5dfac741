"""The sandbox state machine (CONTRACT §C.5, reconciled) as one table: for every verb and
status it allows, what the driver must do (:data:`TRANSITIONS`); every other pair is the
contract's wrong-state error (:func:`step`).

Stored states are the seed's: running, paused, stopped, error, killed, deleted. Verbs come from
the API (start, stop, pause, resume, sleep, wake, delete), from any data-plane call (``use``:
auto-wake) and from the auto-sleep ladder (``idle-*``). Transitions of one sandbox are
serialised by a per-sandbox lock; the row is updated only after the driver succeeded
(``services/sandboxes.py``).
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import InvalidStateError, NotFoundError, VoidRunError


class Status(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"
    KILLED = "killed"
    DELETED = "deleted"


class Verb(StrEnum):
    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    SLEEP = "sleep"
    WAKE = "wake"
    DELETE = "delete"
    USE = "use"  # a data-plane call: wakes a sleeping sandbox first (CONTRACT §D.3 #14)
    IDLE_PAUSE = "idle-pause"  # the auto-sleep ladder (services/reconcile.py)
    IDLE_STOP = "idle-stop"
    IDLE_DELETE = "idle-delete"


class Action(StrEnum):
    """What the driver must do; :data:`RESULT` is the status it leaves the sandbox in."""

    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    START = "start"
    DESTROY = "destroy"


RESULT: dict[Action, Status] = {
    Action.PAUSE: Status.PAUSED,
    Action.RESUME: Status.RUNNING,
    Action.STOP: Status.STOPPED,
    Action.START: Status.RUNNING,
    Action.DESTROY: Status.DELETED,
}

_R, _P, _S = Status.RUNNING, Status.PAUSED, Status.STOPPED
_E, _K, _D = Status.ERROR, Status.KILLED, Status.DELETED

# (verb, status) → the driver action, or None: allowed and already done (no driver call).
TRANSITIONS: dict[tuple[Verb, Status], Action | None] = {
    (Verb.START, _S): Action.START,
    (Verb.START, _E): Action.START,
    (Verb.START, _K): Action.START,
    (Verb.STOP, _R): Action.STOP,
    (Verb.STOP, _P): Action.STOP,
    (Verb.PAUSE, _R): Action.PAUSE,
    (Verb.SLEEP, _R): Action.PAUSE,
    (Verb.RESUME, _P): Action.RESUME,
    (Verb.WAKE, _P): Action.RESUME,
    (Verb.WAKE, _S): Action.START,
    **{(Verb.DELETE, status): Action.DESTROY for status in (_R, _P, _S, _E, _K)},
    (Verb.DELETE, _D): None,  # deleting twice is a 200
    (Verb.USE, _R): None,
    (Verb.USE, _P): Action.RESUME,
    (Verb.USE, _S): Action.START,
    (Verb.IDLE_PAUSE, _R): Action.PAUSE,
    (Verb.IDLE_STOP, _P): Action.STOP,
    (Verb.IDLE_DELETE, _S): Action.DESTROY,
}
# SDK clients see ``paused`` as ``snapshotted``, and the later spec lets ``start`` act on a
# snapshotted sandbox: for them ``start`` on a paused sandbox resumes it.
SDK_TRANSITIONS = {**TRANSITIONS, (Verb.START, _P): Action.RESUME}

# The API verbs' envelope messages, and what their wrong-state error says was expected.
MESSAGES: dict[Verb, str] = {
    Verb.START: "Sandbox started",
    Verb.STOP: "Sandbox stopped",
    Verb.PAUSE: "Sandbox paused",
    Verb.SLEEP: "Sandbox snapshotted",
    Verb.RESUME: "Sandbox resumed",
    Verb.WAKE: "Sandbox restored",
    Verb.DELETE: "Sandbox deleted",
}
EXPECTED: dict[Verb, str] = {
    Verb.START: "stopped",
    Verb.STOP: "running",
    Verb.PAUSE: "running",
    Verb.SLEEP: "running",
    Verb.RESUME: "paused",
    Verb.WAKE: "paused or stopped",
}


def allows(verb: Verb, status: Status, sdk_dialect: bool = False) -> bool:
    return (verb, status) in (SDK_TRANSITIONS if sdk_dialect else TRANSITIONS)


def step(verb: Verb, status: Status, sdk_dialect: bool = False) -> Action | None:
    """The driver action for ``verb`` on a sandbox in ``status`` (None: nothing to do), or
    raises the contract's error for a verb the status does not allow."""
    table = SDK_TRANSITIONS if sdk_dialect else TRANSITIONS
    if (verb, status) not in table:
        raise wrong_state(verb, status)
    return table[verb, status]


def wrong_state(verb: Verb, status: Status) -> VoidRunError:
    """400 ``Invalid sandbox state`` for the API's verbs (CONTRACT §C.5: the seed's 400, not the
    reference's 500); 404 ``Sandbox not running`` for data-plane calls."""
    if verb is Verb.USE:
        return NotFoundError("Sandbox not running", f"current status: {status}")
    expected = EXPECTED.get(verb, f"in a state that allows {verb}")
    return InvalidStateError(details=f"sandbox is not {expected} (current status: {status})")


def present(status: str, sdk_dialect: bool) -> str:
    """The status name a caller sees (CONTRACT decision 1)."""
    if sdk_dialect and status in (Status.PAUSED, Status.STOPPED):
        return "snapshotted"
    return status
