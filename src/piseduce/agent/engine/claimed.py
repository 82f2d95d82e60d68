"""What a runner starts from: the state of the actions an executor just claimed, loaded in the
transaction that claims them (one query with their reservations), so that no action needs a
transaction of its own before its first step. An action claimed for the first time is also
started there (process started, first step started, with their events): its runner goes
straight to the first step's run(), one commit less per action."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from piseduce.agent import lifecycle
from piseduce.agent.actions import add_event, session_now
from piseduce.agent.drivers.base import Process, ReservationView
from piseduce.agent.models import ACTION_OPEN, ACTION_PENDING, ACTION_RUNNING, Action, Reservation
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
    # Started by the claim's transaction: its first step's clock runs from the claim's commit.
    started: bool = False


def load_claimed(
    s: Session,
    action_ids: list[int],
    owner: str,
    processes: Mapping[str, Process] | None = None,
    busy: Collection[int] = (),
) -> dict[int, Loaded]:
    """What the runners of the actions `owner` just claimed start from, in one query (with their
    reservations and nodes): the scheduling pass loads them in the transaction that claims them.
    With `processes`, the pending ones are started too (`start`), except those of the
    reservations in `busy` (another action of theirs still runs here and must stop first)."""
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
        started = False
        if processes is not None and a.status == ACTION_PENDING and a.reservation_id not in busy:
            started = start(s, a, r, processes.get(a.process))
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
            started=started,
        )
    return out


def start(s: Session, a: Action, r: Reservation | None, process: Process | None) -> bool:
    """The transitions "process started" and "first step started" of a pending action (what its
    runner would commit first); False, changing nothing, when there is no step to start."""
    if process is None or not 0 <= a.step_index < len(process.steps):
        return False
    step = process.steps[a.step_index]
    a.status = ACTION_RUNNING
    if r is not None:
        lifecycle.begin(r, process.name)
        r.error = ""
    add_event(s, r, f"{process.name} started", action=a)
    a.step_name = step.name
    a.step_started_at = session_now(s)
    a.step_ran = False
    a.step_rebooted = False
    add_event(s, r, f"{step.title}: started", step=step.name, action=a)
    return True
