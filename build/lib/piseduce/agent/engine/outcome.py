"""How an action ends, as the transitions the journal commits: done (the reservation takes the
process' done status) or failed (its failed status; a failed destroy also marks the node broken)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from piseduce.agent import lifecycle
from piseduce.agent.actions import add_event
from piseduce.agent.drivers.base import Process, Step
from piseduce.agent.engine.journal import Mutation
from piseduce.agent.engine.rows import ActionRow, ReservationRow
from piseduce.agent.lifecycle import FINAL_STATUSES
from piseduce.agent.models import ACTION_DONE, ACTION_FAILED, NODE_BROKEN, Node
from piseduce.protocol_events import EventKind

# What a process's end means for the reservation's owner (the event feed's notices).
FINISHED_KINDS = {
    "deploy": EventKind.DEPLOY_DONE,
    "redeploy": EventKind.DEPLOY_DONE,
    "destroy": EventKind.SLOT_ENDED,
}


def _release(a: ActionRow, status: str) -> None:
    a.status = status
    a.locked_by = None
    a.locked_until = None


def completed(process: Process, step: Step | None) -> Mutation:
    def complete(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
        if step is not None:
            add_event(s, r, f"{step.title}: done", step=step.name, action=a)
        _release(a, ACTION_DONE)
        a.progress = 100
        a.error = ""
        if r is not None:
            # An ended reservation forgets its secrets (models.py, on the status change).
            lifecycle.outcome(r, process.name, ok=True)
            r.error = ""
        add_event(s, r, f"{process.name} finished", action=a, kind=FINISHED_KINDS.get(process.name))

    return complete


def failed(process: Process | None, step_name: str, message: str) -> Mutation:
    """`process` None: an unknown process, which leaves the reservation as it was."""

    def fail(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
        _release(a, ACTION_FAILED)
        a.error = message
        add_event(s, r, message, step=step_name, level="error", action=a)
        if r is None or process is None:
            return
        r.error = message
        if lifecycle.outcome(r, process.name, ok=False) not in FINAL_STATUSES:
            return
        # A failed destroy: the slot is over whatever happens, but the node may still hold the
        # user's system and data, so nobody gets it until an administrator has looked at it.
        node = s.get(Node, r.node_name, with_for_update=True)
        if node is not None:
            node.status = NODE_BROKEN
        add_event(
            s,
            r,
            f"{process.name} failed, so {r.node_name} is marked broken until an administrator checks it "
            "(it may still hold the previous user's data); the reservation is ended",
            step=step_name,
            level="warning",
            action=a,
            kind=EventKind.NODE_BROKEN,
        )

    return fail
