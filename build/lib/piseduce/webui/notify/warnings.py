"""'Your slot ends in N minutes': not an event of the agent's log but a time, so each pass reads
the agents' active reservations and, per user and bin, queues the most urgent warning that is
due (N from the user's preferences, 30 and 5 by default). A web UI that was down past the
30-minute mark but not past the 5-minute one sends only the 5-minute warning; a slot shorter
than N minutes gets no N-minute warning. The outbox key holds the end time, so an extended slot
is warned again before its new end."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.protocol import CONFIGURING, DEPLOYED, DEPLOYING, FAILED, SCHEDULED, ReservationOut
from piseduce.webui.models import User
from piseduce.webui.notify import compose
from piseduce.webui.notify.compose import Draft
from piseduce.webui.notify.store import load_prefs

WARNED = (CONFIGURING, SCHEDULED, DEPLOYING, DEPLOYED, FAILED)


def warn_minutes(s: Session, emails: Iterable[str]) -> dict[str, tuple[int, ...]]:
    out = {}
    for user in s.scalars(select(User).where(User.email.in_(sorted(set(emails))))):
        out[user.email] = load_prefs(s, user.id).warn_minutes
    return out


def due_warnings(
    agent_id: int,
    agent: str,
    reservations: Sequence[ReservationOut],
    minutes: Mapping[str, tuple[int, ...]],
    now: dt.datetime,
) -> list[Draft]:
    groups: dict[tuple[str, str, dt.datetime], list[ReservationOut]] = defaultdict(list)
    for r in reservations:
        if r.status in WARNED and r.end > now:
            groups[(r.owner, r.bin, r.end)].append(r)
    out = []
    for (owner, bin_name, end), members in sorted(groups.items()):
        left = end - now
        start = min(r.start for r in members)
        due = [
            n
            for n in minutes.get(owner, ())
            if left <= dt.timedelta(minutes=n) and end - start >= dt.timedelta(minutes=n)
        ]
        if due:
            out.append(compose.slot_ending(agent_id, agent, owner, bin_name, members, min(due), now))
    return out
