"""The action and reservation rows the engine's hot transactions read and write, as plain objects
loaded and written with SQL statements rather than ORM instances: a thousand concurrent actions
commit a few thousand transitions a second, and the ORM's per-object bookkeeping (identity map,
attribute history, unit of work) cost more than the database itself (issue 15's profile).

A row object remembers the columns a transition set; `write` sends them as one UPDATE per set of
changed columns, with the parameters of every row in it (executemany). The one change the ORM
must still make is a reservation reaching a final status: its listeners erase the reservation's
secrets and settle its energy (models.py), so such a row is applied through the ORM instead.
Locks come in the API's order (reservation, then action), each table's rows in id order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, TypeVar, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from piseduce.agent.lifecycle import FINAL_STATUSES
from piseduce.agent.models import Action, Reservation
from piseduce.db import among

ACTIONS = cast(Table, Action.__table__)
RESERVATIONS = cast(Table, Reservation.__table__)


class _Row:
    """Columns as attributes; those set after loading are remembered (`changes`)."""

    COLUMNS: ClassVar[tuple[str, ...]] = ()
    id: int

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_loaded", values)
        object.__setattr__(self, "_changed", {})
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        self._changed[name] = value

    def changes(self) -> dict[str, Any]:
        """The columns set since loading whose value differs from the loaded one."""
        loaded = self._loaded
        return {k: v for k, v in self._changed.items() if k not in loaded or loaded[k] != v}

    _loaded: dict[str, Any]
    _changed: dict[str, Any]


class ActionRow(_Row):
    COLUMNS = (
        "id",
        "reservation_id",
        "process",
        "status",
        "step_index",
        "step_name",
        "step_started_at",
        "step_rebooted",
        "step_ran",
        "progress",
        "error",
        "args",
        "locked_by",
        "locked_until",
    )
    reservation_id: int | None
    process: str
    status: str
    step_index: int
    step_name: str
    step_started_at: dt.datetime
    step_rebooted: bool
    step_ran: bool
    progress: int
    error: str
    args: dict[str, Any]
    locked_by: str | None
    locked_until: dt.datetime | None


class ReservationRow(_Row):
    COLUMNS = ("id", "node_name", "status", "end", "error", "driver_state", "connection")
    node_name: str
    status: str
    end: dt.datetime
    error: str
    driver_state: dict[str, Any]
    connection: dict[str, Any]


def _locking(s: Session) -> bool:
    # SQLite's write transaction (BEGIN IMMEDIATE) is exclusive already.
    return s.get_bind().dialect.name != "sqlite"


def load_actions(
    s: Session, ids: Iterable[int], *, lock: bool = True, columns: Sequence[str] = ActionRow.COLUMNS
) -> dict[int, ActionRow]:
    """The action rows `ids` (their `columns`, the id first), fresh, locked (PostgreSQL) in id
    order: one query."""
    return _load(s, ActionRow, ACTIONS, ids, lock, columns)


def load_reservations(
    s: Session, ids: Iterable[int], *, lock: bool = True, columns: Sequence[str] = ReservationRow.COLUMNS
) -> dict[int, ReservationRow]:
    """The reservation rows `ids` (their `columns`, the id first), fresh, locked (PostgreSQL) in id
    order: one query."""
    return _load(s, ReservationRow, RESERVATIONS, ids, lock, columns)


R = TypeVar("R", bound=_Row)


def _load(
    s: Session, kind: type[R], table: Table, ids: Iterable[int], lock: bool, columns: Sequence[str]
) -> dict[int, R]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = select(*(table.c[c] for c in columns)).where(among(s, table.c.id, wanted)).order_by(table.c.id)
    if lock and _locking(s):
        query = query.with_for_update()
    # Plain tuples (no mapping per row): this is the hot loop of a group commit.
    return {row[0]: kind(dict(zip(columns, row, strict=True))) for row in s.execute(query).all()}


def write(s: Session, reservations: Iterable[ReservationRow], actions: Iterable[ActionRow]) -> None:
    """Write what the rows' transitions changed: reservations first, then actions (the lock order)."""
    plain: list[ReservationRow] = []
    for r in reservations:
        changed = r.changes()
        if changed.get("status") in FINAL_STATUSES:
            _through_orm(s, r, changed)
        elif changed:
            plain.append(r)
    _update(s, RESERVATIONS, plain)
    _update(s, ACTIONS, actions)


def _through_orm(s: Session, r: ReservationRow, changed: dict[str, Any]) -> None:
    """A reservation that ends: its ORM listeners erase its secrets and settle its energy."""
    row = s.get(Reservation, r.id, populate_existing=True)
    if row is None:
        return
    # The status last, so that its listener sees the state written with it.
    for key, value in changed.items():
        if key != "status":
            setattr(row, key, value)
    row.status = changed["status"]


def _update(s: Session, table: Table, rows: Iterable[_Row]) -> None:
    """One UPDATE per set of changed columns, executed with every row's parameters at once."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        changed = row.changes()
        if changed:
            groups.setdefault(tuple(sorted(changed)), []).append({"_id": row.id, **changed})
    for params in groups.values():
        # The SET clause is the parameters' columns (and the table's onupdate ones).
        s.execute(update(table).where(table.c.id == bindparam("_id")), params)
