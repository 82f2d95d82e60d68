"""The reservation lifecycle as data (DESIGN §5.2): statuses, events, what each event does in each
status, and the reason it is refused where it may not happen.

    configuring ──deploy──> scheduled ──start──> deploying ──finish──> deployed
         │                      │                    └──fail──> failed
         │ cancel               │ cancel   (reboot, redeploy, bootfiles, register_env: deployed/failed
         v                      v           ──> deploying, as their process runs)
     cancelled              cancelled      destroy/expire ──> destroying ──finish|fail──> ended

The API (`agent/api/reservations.py`), the executor (`agent/engine/`) and the actions offered on
the manage page (`agent/api/views.py`) all ask this module; none of them keeps its own list of
which status allows what. `TRANSITIONS` says where an event leads; every pair it leaves out is
refused, with the sentence of `refusal` (as OpenStack Ironic's `common/states.py` declares its
provisioning machine). Conditions that are not a matter of status (an action already running, a
redeploy with nothing deployed yet, a slot already over) stay with their callers.

Which status a process gives its reservation is data too (`PROCESSES`): drivers declare only the
steps of a process, never the statuses around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

CONFIGURING = "configuring"
SCHEDULED = "scheduled"
DEPLOYING = "deploying"
DEPLOYED = "deployed"
FAILED = "failed"
DESTROYING = "destroying"
ENDED = "ended"
CANCELLED = "cancelled"
STATUSES = (CONFIGURING, SCHEDULED, DEPLOYING, DEPLOYED, FAILED, DESTROYING, ENDED, CANCELLED)
# A reservation in one of these holds its node in the calendar.
ACTIVE_STATUSES = (CONFIGURING, SCHEDULED, DEPLOYING, DEPLOYED, FAILED, DESTROYING)
FINAL_STATUSES = (ENDED, CANCELLED)


class Trigger(StrEnum):
    """What makes a reservation move (events in the state-machine sense, not the timeline's)."""

    # Asked by users through the API (one route each; `cancel` is a destroy before anything ran).
    FORM = "form"  # read the deploy form
    DEPLOY = "deploy"  # store the deploy form
    CANCEL = "cancel"
    DESTROY = "destroy"
    EXTEND = "extend"
    REBOOT = "reboot"
    REDEPLOY = "redeploy"
    BOOTFILES = "bootfiles"
    REGISTER_ENV = "register_env"
    # The API on its own: the testbed refused a booking just written.
    ROLLBACK = "rollback"
    # The executor's scheduling pass.
    START = "start"  # the slot began: the deployment is queued
    UNAVAILABLE = "unavailable"  # the slot began on a node in maintenance or broken
    EXPIRE = "expire"  # the slot ended: destroy queued (or cancelled before it was configured)
    RELEASE = "release"  # the slot ended on a node type with nothing to destroy
    # The executor's runner: the running process finished or failed.
    FINISH = "finish"
    FAIL = "fail"


# The events of the user's routes, in the order the manage page offers them.
USER_EVENTS = (
    Trigger.FORM,
    Trigger.DEPLOY,
    Trigger.CANCEL,
    Trigger.DESTROY,
    Trigger.EXTEND,
    Trigger.REBOOT,
    Trigger.REDEPLOY,
    Trigger.BOOTFILES,
    Trigger.REGISTER_ENV,
)


@dataclass(frozen=True)
class ProcessStatuses:
    """The reservation's status while a process runs, once it is done, once it failed."""

    running: str
    done: str
    failed: str


_DEPLOYS = ProcessStatuses(DEPLOYING, DEPLOYED, FAILED)
# A failed destroy ends the reservation all the same (the slot is over); the engine marks the node
# broken, since it may still hold the user's data.
PROCESSES: dict[str, ProcessStatuses] = {
    "deploy": _DEPLOYS,
    "redeploy": _DEPLOYS,
    "reboot": _DEPLOYS,
    "bootfiles": _DEPLOYS,
    "register_env": _DEPLOYS,
    "destroy": ProcessStatuses(DESTROYING, ENDED, ENDED),
}
PROCESS_NAMES = tuple(PROCESSES)
# The process each user event queues.
QUEUES = {
    Trigger.DESTROY: "destroy",
    Trigger.REBOOT: "reboot",
    Trigger.REDEPLOY: "redeploy",
    Trigger.BOOTFILES: "bootfiles",
    Trigger.REGISTER_ENV: "register_env",
}


def _each(statuses: tuple[str, ...], event: Trigger, target: str | None) -> dict[tuple[str, Trigger], str]:
    """`event` allowed in each of `statuses`, leading to `target` (None: the status stays)."""
    return {(s, event): target or s for s in statuses}


_LIVE = (CONFIGURING, SCHEDULED, DEPLOYING, DEPLOYED, FAILED)
_UP = (DEPLOYED, FAILED)

TRANSITIONS: dict[tuple[str, Trigger], str] = {
    **_each(_LIVE, Trigger.FORM, None),
    (CONFIGURING, Trigger.DEPLOY): SCHEDULED,
    **_each((CONFIGURING, SCHEDULED), Trigger.CANCEL, CANCELLED),
    # In `destroying` a destroy may be asked again when none runs (the API refuses a second one).
    **_each(ACTIVE_STATUSES, Trigger.DESTROY, DESTROYING),
    **_each(_LIVE, Trigger.EXTEND, None),
    **_each(_UP, Trigger.REBOOT, DEPLOYING),
    **_each(_UP, Trigger.REDEPLOY, DEPLOYING),
    (DEPLOYED, Trigger.BOOTFILES): DEPLOYING,
    (DEPLOYED, Trigger.REGISTER_ENV): DEPLOYING,
    **_each((CONFIGURING, SCHEDULED), Trigger.ROLLBACK, CANCELLED),
    (SCHEDULED, Trigger.START): DEPLOYING,
    (SCHEDULED, Trigger.UNAVAILABLE): FAILED,
    (CONFIGURING, Trigger.EXPIRE): CANCELLED,
    **_each((SCHEDULED, DEPLOYING, DEPLOYED, FAILED, DESTROYING), Trigger.EXPIRE, DESTROYING),
    **_each((SCHEDULED, DEPLOYING, DEPLOYED, FAILED, DESTROYING), Trigger.RELEASE, ENDED),
    **{(p.running, Trigger.FINISH): p.done for p in PROCESSES.values()},
    **{(p.running, Trigger.FAIL): p.failed for p in PROCESSES.values()},
}

# Why a pair left out of TRANSITIONS is refused: by (status, event), else by event, else by status.
# `{id}` is the reservation's id, `{status}` its status, `{allowed}` the statuses that allow it.
_BY_PAIR: dict[tuple[str, Trigger], str] = {
    **_each(_UP, Trigger.DEPLOY, "the reservation is {status}: use redeploy to deploy again"),
    **_each(
        (SCHEDULED, DEPLOYING),
        Trigger.DEPLOY,
        "the reservation is already {status}; destroy it or wait, then redeploy",
    ),
    **_each(FINAL_STATUSES, Trigger.DESTROY, "reservation {id} is already {status}"),
    **_each(FINAL_STATUSES, Trigger.CANCEL, "reservation {id} is already {status}"),
}
_BY_EVENT: dict[Trigger, str] = {
    Trigger.FORM: "reservation {id} is {status}",
    Trigger.DEPLOY: "the reservation is {status}",
    Trigger.CANCEL: "reservation {id} is {status}: it can no longer be cancelled, only destroyed",
    Trigger.EXTEND: "reservation {id} is {status}; it cannot be extended",
    Trigger.REBOOT: "reboot needs a {allowed} reservation; this one is {status}",
    Trigger.REDEPLOY: "redeploy needs a {allowed} reservation; this one is {status}",
    Trigger.BOOTFILES: "bootfiles needs a {allowed} reservation; this one is {status}",
    Trigger.REGISTER_ENV: "only a deployed node can be saved as an environment; this one is {status}",
}
_BY_STATUS = "reservation {id} is {status}: {event} is not possible now"


class Refused(Exception):
    """The event may not happen in the reservation's status; `reason` says why, for users."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HasStatus(Protocol):
    id: int
    status: str


def allows(status: str, event: Trigger) -> bool:
    return (status, event) in TRANSITIONS


def allowed_in(event: Trigger) -> tuple[str, ...]:
    """The statuses in which `event` may happen, in lifecycle order."""
    return tuple(s for s in STATUSES if (s, event) in TRANSITIONS)


def refusal(status: str, event: Trigger, reservation_id: int = 0) -> str | None:
    """Why `event` may not happen in `status`, or None when it may."""
    if allows(status, event):
        return None
    words = _BY_PAIR.get((status, event)) or _BY_EVENT.get(event) or _BY_STATUS
    return words.format(
        id=reservation_id, status=status, event=event.value, allowed=" or ".join(allowed_in(event))
    )


def after(status: str, event: Trigger, reservation_id: int = 0) -> str:
    """The status `event` leads to from `status`; Refused when it may not happen."""
    target = TRANSITIONS.get((status, event))
    if target is None:
        raise Refused(refusal(status, event, reservation_id) or "")
    return target


def move(reservation: HasStatus, event: Trigger) -> str:
    """Apply `event` to a reservation row (its status changes in the caller's transaction)."""
    reservation.status = after(reservation.status, event, reservation.id)
    return reservation.status


def statuses_of(process: str) -> ProcessStatuses:
    """What `process` makes of its reservation (KeyError for a process the lifecycle lacks)."""
    return PROCESSES[process]


def begin(reservation: HasStatus, process: str) -> None:
    """A queued process starts: its reservation has the process' running status (already set by
    whoever queued it; a row written by hand gets it here)."""
    reservation.status = PROCESSES[process].running


def outcome(reservation: HasStatus, process: str, *, ok: bool) -> str:
    """The process finished (`ok`) or failed: the reservation's status after it. By process rather
    than by the row's status, which is the process' running status anyway while it is held."""
    statuses = PROCESSES[process]
    reservation.status = statuses.done if ok else statuses.failed
    return reservation.status
