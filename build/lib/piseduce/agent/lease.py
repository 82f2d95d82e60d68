"""Action leases: which executor runs which action.

Several executor processes may share one database. An open action is run by the executor whose
name is in `locked_by` until `locked_until`; the owner extends the lease while it works. Claiming is
one conditional UPDATE of the free actions (`... WHERE locked_until IS NULL OR locked_until < now
RETURNING id`), so two executors never both win one. An executor that stops cleanly releases its
leases; one that is killed has them expire, and any executor then claims and resumes the action.

Times are the executors' own UTC clocks: hosts sharing a database must keep them synchronised
(NTP) to well under the lease length.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Integer, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from piseduce.agent.models import ACTION_OPEN, Action, ExecutorPresence
from piseduce.db import among

DEFAULT_LEASE_SECONDS = 30.0


class LeaseLost(Exception):
    """This executor no longer owns the action (cancelled, superseded or taken over)."""


def _free(now: dt.datetime | BindParameter[dt.datetime]) -> ColumnElement[bool]:
    return or_(Action.locked_until.is_(None), Action.locked_until < now)


# The lookup of every scheduling pass, built once ('now' and the limit bound per pass): building
# it each time cost more CPU than running it on an idle agent.
_CLAIMABLE = (
    select(Action.id)
    .where(Action.status.in_(ACTION_OPEN), _free(bindparam("now")))
    .order_by(Action.id)
    .limit(bindparam("limit", type_=Integer))
)
_CLAIMABLE_LOCKED = _CLAIMABLE.with_for_update(skip_locked=True)


def claimable(session: Session, now: dt.datetime, limit: int, exclude: Iterable[int] = ()) -> list[int]:
    """Ids of open actions nobody holds (or whose lease expired), oldest first. On PostgreSQL the
    rows are locked, skipping those another executor is claiming right now (SKIP LOCKED), so
    executors claiming at the same moment take different actions instead of waiting on each
    other and finding them gone."""
    skip = set(exclude)
    query = _CLAIMABLE if session.get_bind().dialect.name == "sqlite" else _CLAIMABLE_LOCKED
    ids = session.scalars(query, {"now": now, "limit": limit + len(skip)})
    return [i for i in ids if i not in skip][:limit]


def claim(session: Session, action_id: int, owner: str, now: dt.datetime, seconds: float) -> bool:
    """Take the lease of one action; False when someone else holds it or it is no longer open."""
    result = session.execute(
        update(Action)
        .where(Action.id == action_id, Action.status.in_(ACTION_OPEN), _free(now))
        .values(locked_by=owner, locked_until=now + dt.timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def claim_many(
    session: Session, ids: Iterable[int], owner: str, now: dt.datetime, seconds: float
) -> list[int]:
    """Take the leases of `ids` in one conditional UPDATE; returns those won (oldest first). Rows
    another executor claims meanwhile fail the condition once its claim is committed (PostgreSQL
    re-checks it after the row lock; SQLite's writers are serialised)."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    won = session.scalars(
        update(Action)
        .where(among(session, Action.id, wanted), Action.status.in_(ACTION_OPEN), _free(now))
        .values(locked_by=owner, locked_until=now + dt.timedelta(seconds=seconds))
        .returning(Action.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(won)


def renew(session: Session, ids: Iterable[int], owner: str, now: dt.datetime, seconds: float) -> set[int]:
    """Extend the leases this owner still holds among `ids`; returns the ids still held."""
    wanted = list(ids)
    if not wanted:
        return set()
    session.execute(
        update(Action)
        .where(among(session, Action.id, wanted), Action.locked_by == owner, Action.status.in_(ACTION_OPEN))
        .values(locked_until=now + dt.timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    mine = (among(session, Action.id, wanted), Action.locked_by == owner, Action.status.in_(ACTION_OPEN))
    return set(session.scalars(select(Action.id).where(*mine)))


def release(session: Session, owner: str, ids: Iterable[int] | None = None) -> int:
    """Give back the leases of `owner` (all of them, or only `ids`) so another executor may resume
    the actions at once instead of waiting for the leases to expire."""
    query = update(Action).where(Action.locked_by == owner)
    if ids is not None:
        query = query.where(Action.id.in_(list(ids)))
    result = session.execute(
        query.values(locked_by=None, locked_until=None).execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def present(session: Session, owner: str, now: dt.datetime, seconds: float) -> int:
    """Say that `owner` is alive for `seconds` more; returns how many executors are alive now
    (itself included), so that each takes its share of a backlog (`share`)."""
    row = session.get(ExecutorPresence, owner)
    until = now + dt.timedelta(seconds=seconds)
    if row is None:
        session.add(ExecutorPresence(name=owner, seen_until=until))
        session.flush()
    else:
        row.seen_until = until
    alive = session.scalar(
        select(func.count()).select_from(ExecutorPresence).where(ExecutorPresence.seen_until > now)
    )
    return max(1, int(alive or 0))


def absent(session: Session, owner: str) -> None:
    """`owner` stops: the others no longer leave it a share."""
    session.execute(delete(ExecutorPresence).where(ExecutorPresence.name == owner))


def share(
    session: Session, now: dt.datetime, executors: int, mine: int, room: int, patience: float
) -> int:
    """How many waiting actions one of `executors` executors, running `mine` already, claims in a
    pass: all it has room for when it is alone; else enough to run its fair share of the open
    actions (rounded up, so none is left over), and at least every action that has waited longer
    than `patience` seconds (a peer that is full or stuck leaves them to whoever has room)."""
    if executors <= 1 or room <= 0:
        return room
    is_open = Action.status.in_(ACTION_OPEN)
    free = and_(is_open, _free(now))
    stale = and_(free, Action.created_at < now - dt.timedelta(seconds=patience))
    row = session.execute(
        select(func.count().filter(is_open), func.count().filter(free), func.count().filter(stale))
    ).one()
    total, waiting, old = (int(n or 0) for n in row)
    fair = -(-total // executors) - mine
    return max(0, min(room, waiting, max(fair, old)))
