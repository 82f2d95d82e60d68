"""An administrator switching the power of a node someone holds: the holder is told.

A board switched off under its user must not look deployed and fine with no word. The
reservation keeps its status (a deployed system is intact on its card; the owner's Reboot powers
the board on again, a deployment powers it on when it needs it) and gets an event saying who did
it and what brings the board back.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.agent.actions import add_event
from piseduce.agent.lifecycle import ACTIVE_STATUSES, DEPLOYED, DEPLOYING
from piseduce.agent.models import Reservation
from piseduce.dbtypes import utcnow


def power_note(node: str, on: bool, user: str, status: str) -> str:
    """What the holder of a node reads when an administrator switches its power."""
    if on:
        return f"{node} was powered on again by the administrator {user}"
    if status == DEPLOYING:
        after = "the deployment powers it on again when it needs the board"
    elif status == DEPLOYED:
        after = "the system on its card is intact: Reboot powers it on again"
    else:
        after = "the next action on this reservation powers it on again"
    return f"{node} was powered off by the administrator {user}; {after}"


def tell_holders(s: Session, node: str, on: bool, user: str) -> None:
    """An event on every reservation holding `node` now."""
    now = utcnow()
    held = s.scalars(select(Reservation).where(
        Reservation.node_name == node, Reservation.status.in_(ACTIVE_STATUSES),
        Reservation.start <= now, Reservation.end > now))
    for r in held:
        add_event(s, r, power_note(node, on, user, r.status), level="info" if on else "warning", actor=user)
