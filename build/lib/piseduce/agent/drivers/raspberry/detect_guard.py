"""Which ports detection must not touch (issue 16 testers): a port whose node a reservation holds
now. Detection powers a port on, logs into what boots and powers the port off; on a board a user
holds, that would log into the user's system as root and cut its power under them. Such a port is
reported at once and never powered.

A reservation holds its node from its start until it is final (ended, cancelled): while it waits
to be deployed, while deployed, failed or being destroyed, and also past its busy_until when the
engine has not released it yet (the board may still be up). The time given is its busy_until."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from piseduce.agent.holds import fmt
from piseduce.agent.lifecycle import ACTIVE_STATUSES
from piseduce.agent.models import Reservation


def held_until(session: Session, names: Iterable[str], now: dt.datetime) -> dict[str, dt.datetime]:
    """The nodes of `names` an active reservation holds at `now`: name -> until when (the latest
    busy_until of the reservations holding it)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    rows = session.execute(
        select(Reservation.node_name, func.max(Reservation.busy_until))
        .where(Reservation.node_name.in_(wanted), Reservation.status.in_(ACTIVE_STATUSES),
               Reservation.start <= now)
        .group_by(Reservation.node_name)
    )
    return {name: until for name, until in rows}


def held_reason(until: dt.datetime) -> str:
    return f"in use by a reservation until {fmt(until)}: not detected"
