"""What a runner starts from: the state of the actions an executor just claimed, loaded in the
transaction that claims them (one query with their reservations), so that no action needs a
transaction of its own before its first step."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from piseduce.agent.drivers.base import ReservationView
from piseduce.agent.models import ACTION_OPEN, Action
from piseduce.agent.snapshots import reservation_view


@dataclass
class Loaded:
    process: str
    status: str
    step_index: int
    step_name: str
    step_ran: bool
    step_rebooted: bool
    step_started_at: dt.datetime
    progress: int
    args: dict[str, Any]
    reservation: ReservationView | None
    credentials: str | None


def load_claimed(s: Session, action_ids: list[int], owner: str) -> dict[int, Loaded]:
    """What the runners of the actions `owner` just claimed start from, in one query (with their
    reservations and nodes): the scheduling pass loads them in the transaction that claims them."""
    if not action_ids:
        return {}
    query = (
        select(Action)
        .where(Action.id.in_(action_ids))
        .options(selectinload(Action.reservation))
        .execution_options(populate_existing=True)
    )
    out = {}
    for a in s.scalars(query):
        if a.status not in ACTION_OPEN or a.locked_by != owner:
            continue
        r = a.reservation
        out[a.id] = Loaded(
            process=a.process,
            status=a.status,
            step_index=a.step_index,
            step_name=a.step_name,
            step_ran=a.step_ran,
            step_rebooted=a.step_rebooted,
            step_started_at=a.step_started_at,
            progress=a.progress,
            args=copy.deepcopy(a.args or {}),
            reservation=reservation_view(r, sealed_params=True) if r is not None else None,
            credentials=r.credentials if r is not None else None,
        )
    return out
