"""Private calendar feeds (issue 17): each user may have one secret URL, `/calendar/<secret>.ics`,
that a calendar app polls (it cannot log in): read-only, their own reservations only.

The secret is `pcf_` + 32 random bytes (urlsafe base64): only its SHA-256 is stored, as the lookup
key (nobody guesses 256 random bits, so a slow hash would only slow the lookup), and it is shown
once, when made. Regenerating replaces the row: the old URL answers 404 from then on.

An event's SEQUENCE and LAST-MODIFIED come from `calendar_entries`: what the feed last said of a
reservation (a digest of its fields); when that changes, the sequence grows and the time moves.

Every function taking a `Session` runs in the web UI's `Database` threads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from piseduce.protocol import CANCELLED, ReservationOut
from piseduce.webui import ical
from piseduce.webui.agents import AgentRef
from piseduce.webui.models import STATE_ACTIVE, CalendarEntry, CalendarFeed, User

PREFIX = "pcf_"
SECRET_RE = re.compile(r"^pcf_[A-Za-z0-9_-]{43}$")
LAST_USED_EVERY = dt.timedelta(seconds=60)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def regenerate(s: Session, user_id: int, now: dt.datetime) -> str:
    """A new secret for `user_id`'s feed (the old one, if any, stops working); shown once."""
    secret = PREFIX + secrets.token_urlsafe(32)
    s.execute(delete(CalendarFeed).where(CalendarFeed.user_id == user_id))
    s.add(CalendarFeed(user_id=user_id, secret_hash=digest_of(secret), created_at=now))
    return secret


def revoke(s: Session, user_id: int) -> bool:
    return s.execute(delete(CalendarFeed).where(CalendarFeed.user_id == user_id)).rowcount > 0  # type: ignore[attr-defined]


def feed_of(s: Session, user_id: int) -> CalendarFeed | None:
    return s.get(CalendarFeed, user_id)


def user_of(s: Session, secret: str, now: dt.datetime) -> User | None:
    """The active user whose feed this secret opens, or None (unknown, revoked, malformed)."""
    if not SECRET_RE.match(secret):
        return None
    feed = s.scalar(select(CalendarFeed).where(CalendarFeed.secret_hash == digest_of(secret)))
    if feed is None:
        return None
    user = s.get(User, feed.user_id)
    if user is None or user.state != STATE_ACTIVE:
        return None
    if feed.last_used is None or now - feed.last_used >= LAST_USED_EVERY:
        feed.last_used = now
    return user


@dataclass(frozen=True)
class Shown:
    """One reservation as the feed shows it, before its sequence is known."""

    uid: str
    start: dt.datetime
    end: dt.datetime
    summary: str
    description: str
    cancelled: bool

    @property
    def digest(self) -> str:
        fields = "\x1f".join((ical.utc(self.start), ical.utc(self.end), self.summary, self.description))
        return hashlib.sha256(fields.encode()).hexdigest()


def shown(ref: AgentRef, r: ReservationOut) -> Shown:
    """A reservation in the feed's words: nodes, bin, agent and state in the description."""
    lines = [
        f"Nodes: {r.node}",
        f"Bin: {r.bin or '(none)'}",
        f"Agent: {ref.name} ({ref.node_type}{', ' + ref.site if ref.site else ''})",
        f"State: {r.status}" + (f" ({r.step_label})" if r.step_label else ""),
        f"Reservation: {ref.name}/{r.id}",
    ]
    if r.error:
        lines.append(f"Error: {r.error}")
    summary = f"{r.node} on {ref.name}" + (f" [{r.bin}]" if r.bin else "")
    return Shown(
        uid=f"reservation-{r.id}.agent-{ref.id}@piseduce",
        start=r.start,
        end=r.end,
        summary=summary,
        description="\n".join(lines),
        cancelled=r.status == CANCELLED,
    )


def events(s: Session, user_id: int, items: Sequence[Shown], now: dt.datetime) -> list[ical.Event]:
    """The events, each with the sequence and modification time its last change gave it."""
    known = {e.uid: e for e in s.scalars(select(CalendarEntry).where(CalendarEntry.user_id == user_id))}
    out: list[ical.Event] = []
    for it in items:
        entry = known.get(it.uid)
        if entry is None:
            entry = CalendarEntry(user_id=user_id, uid=it.uid, digest=it.digest, sequence=0, modified=now)
            s.add(entry)
            known[it.uid] = entry
        elif entry.digest != it.digest:
            entry.digest, entry.sequence, entry.modified = it.digest, entry.sequence + 1, now
        out.append(
            ical.Event(
                it.uid,
                it.start,
                it.end,
                it.summary,
                it.description,
                entry.modified,
                entry.sequence,
                it.cancelled,
            )
        )
    return out
