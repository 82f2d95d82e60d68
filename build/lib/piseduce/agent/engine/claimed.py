"""What a runner starts from: the state of the actions an executor just claimed, loaded in the
transaction that claims them (one query with their reservations), so that no action needs a
transaction of its own before its first step. An action claimed for the first time is also
started there (process started, first step started, with their events): its runner goes
straight to the first step's run(), one commit less per action."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from piseduce.agent import lifecycle
from piseduce.agent.actions import add_event, session_now
from piseduce.agent.drivers.base import NodeView, Process, ReservationView
from piseduce.agent.engine.rows import RESERVATIONS, ActionRow, ReservationRow, load_actions, write
from piseduce.agent.models import ACTION_OPEN, ACTION_PENDING, ACTION_RUNNING, Node
from piseduce.db import among

NODES = cast(Table, Node.__table__)


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
    # Claimed (so locked) by this transaction already: plain reads, in two queries for all.
    actions = load_actions(s, action_ids, lock=False)
    held = [a for a in actions.values() if a.status in ACTION_OPEN and a.locked_by == owner]
    reservations = _reservations(s, (a.reservation_id for a in held if a.reservation_id is not None))
    out = {}
    for a in held:
        r, view, credentials = reservations.get(a.reservation_id or 0, (None, None, None))
        started = False
        if processes is not None and a.status == ACTION_PENDING and a.reservation_id not in busy:
            started = start(s, a, r, processes.get(a.process))
        if view is not None and r is not None:
            view.status = r.status
        out[a.id] = Loaded(
            process=a.process,
            status=a.status,
            step_index=a.step_index,
            step_name=a.step_name,
            step_ran=a.step_ran,
            step_rebooted=a.step_rebooted,
            step_started_at=a.step_started_at,
            progress=a.progress,
            args=a.args or {},
            reservation=view,
            credentials=credentials,
            started=started,
        )
    write(s, [r for r, _, _ in reservations.values()], actions.values())
    return out


def _reservations(
    s: Session, ids: Iterable[int]
) -> dict[int, tuple[ReservationRow, ReservationView, str | None]]:
    """The reservations `ids` with their nodes, in one query: the row the claim's transitions
    change, the view the runner starts from (its own copies of the JSON columns, decoded for it)
    and the sealed credentials."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    r, n = RESERVATIONS.c, NODES.c
    query = (
        select(
            *(r[c] for c in ReservationRow.COLUMNS),
            r.owner,
            r.bin,
            r.start,
            r.params,
            r.credentials,
            n.ip.label("node_ip"),
            n.status.label("node_status"),
            n.properties.label("node_properties"),
            n.attrs.label("node_attrs"),
        )
        .join_from(RESERVATIONS, NODES, r.node_name == n.name)
        .where(among(s, r.id, wanted))
        .order_by(r.id)
    )
    out = {}
    for m in s.execute(query).mappings():
        row = ReservationRow({c: m[c] for c in ReservationRow.COLUMNS})
        node = NodeView(
            name=m["node_name"],
            ip=m["node_ip"],
            status=m["node_status"],
            properties=m["node_properties"] or {},
            attrs=m["node_attrs"] or {},
        )
        view = ReservationView(
            id=m["id"],
            node=node,
            owner=m["owner"],
            bin=m["bin"],
            start=m["start"],
            end=m["end"],
            status=m["status"],
            # Decoded again from the row's JSON: what a driver changes in them is its own.
            params=_copy(m["params"]),
            driver_state=_copy(m["driver_state"]),
            connection=_copy(m["connection"]),
        )
        out[row.id] = (row, view, m["credentials"])
    return out


def start(s: Session, a: ActionRow, r: ReservationRow | None, process: Process | None) -> bool:
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


def _copy(value: dict[str, Any] | None) -> dict[str, Any]:
    return copy.deepcopy(value) if value else {}
