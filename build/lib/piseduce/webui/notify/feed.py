"""Reading one agent's event feed with the persisted cursor (models.NotifyCursor).

Each pass asks the events after the cursor, minus `OVERLAP` ids: on PostgreSQL an event id can
become visible after a greater one (two transactions committing out of order), so the last ids
are read again and the outbox's unique keys drop what was queued already. The drafts of a page
and the cursor's new position are written in one transaction. A new agent's cursor starts at its
current last event: its history before this web UI knew it is nobody's news.

A bin's deployment (or end) is told once, when its last node is done: the agent is asked for the
user's reservations to see whether any node of the bin is still on its way."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy.orm import Session

from piseduce.protocol import (
    ACTIVE_STATUSES,
    CONFIGURING,
    DEPLOYED,
    DEPLOYING,
    FAILED,
    SCHEDULED,
    ReservationOut,
)
from piseduce.protocol_events import EventFeed, EventKind, FeedEvent
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.database import Database
from piseduce.webui.jumps import jump_of
from piseduce.webui.models import NotifyCursor, utcnow
from piseduce.webui.notify import compose
from piseduce.webui.notify.compose import Draft
from piseduce.webui.notify.queueing import queue_drafts

log = logging.getLogger(__name__)

NOTIFIER = Identity(email="piseduce-notifier", role="admin")
OVERLAP = 200
PAGE = 500
UNDERWAY = (CONFIGURING, SCHEDULED, DEPLOYING)  # a bin's deployment is not over
NOT_OVER = ACTIVE_STATUSES


@dataclass
class PassResult:
    read: int = 0
    queued: int = 0
    error: str = ""


def line_of(ref: AgentRef, r: ReservationOut) -> str:
    """The command that logs in, as Manage shows it (through the agent's gateway if it has one)."""
    j = jump_of(ref, r)
    return j.command if j is not None else r.ssh


class FeedReader:
    def __init__(self, hub: AgentClient, *, mail: bool) -> None:
        self.hub = hub
        self.mail = mail
        self.seen: dict[int, set[int]] = {}  # per agent: the overlap's ids handled by this process

    async def _members(
        self, ref: AgentRef, user: str, cache: dict[str, list[ReservationOut] | None], ev: FeedEvent
    ) -> list[ReservationOut] | None:
        if user not in cache:
            got = await self.hub.reservations(ref, Identity(email=user, role="user"))
            cache[user] = got.value
        mine = cache[user]
        if mine is None:
            return None
        if not ev.bin:
            return [r for r in mine if r.id == ev.reservation_id]
        return [r for r in mine if r.bin == ev.bin and r.owner == user]

    async def drafts(self, ref: AgentRef, events: Sequence[FeedEvent]) -> list[Draft] | None:
        """The drafts of a page of events; None when the agent could not say what a bin holds
        (the page is read again next pass)."""
        out: list[Draft] = []
        cache: dict[str, list[ReservationOut] | None] = {}
        for ev in events:
            for user in ev.users:
                if ev.kind == EventKind.ADMIN_ACTION:
                    out.append(compose.admin_action(ref.id, ref.name, user, ev))
                elif ev.kind == EventKind.NODE_BROKEN:
                    out.append(compose.node_broken(ref.id, ref.name, user, ev))
                elif ev.kind in (EventKind.DEPLOY_DONE, EventKind.DEPLOY_FAILED, EventKind.SLOT_ENDED):
                    if ev.kind == EventKind.DEPLOY_FAILED:
                        out.append(compose.deploy_failed(ref.id, ref.name, user, ev))
                    members = await self._members(ref, user, cache, ev)
                    if members is None:
                        return None
                    out.extend(self._bin_drafts(ref, user, ev, members))
        return out

    def _bin_drafts(
        self, ref: AgentRef, user: str, ev: FeedEvent, members: list[ReservationOut]
    ) -> list[Draft]:
        if not members:
            return []
        if ev.kind == EventKind.SLOT_ENDED:
            # The nodes of the bin that ended with this one (same end), all given back.
            same = [r for r in members if ev.end is None or r.end == ev.end]
            if not same or any(r.status in NOT_OVER for r in same):
                return []
            return [compose.slot_ended(ref.id, ref.name, user, ev.bin, same)]
        live = [r for r in members if r.status in (*UNDERWAY, DEPLOYED, FAILED)]
        if not live or any(r.status in UNDERWAY for r in live):
            return []
        lines = {r.id: line_of(ref, r) for r in live if r.status == DEPLOYED}
        if ev.kind == EventKind.DEPLOY_DONE and ev.reservation_id not in lines and ev.connection:
            lines[ev.reservation_id or 0] = str(ev.connection.get("ssh", ""))
        return [compose.deploy_done(ref.id, ref.name, user, ev.bin, live, lines)]

    async def one_pass(self, ref: AgentRef, database: Database) -> PassResult:
        """Read the agent's feed from the cursor to its end, queueing what concerns the users."""
        result = PassResult()
        cursor = await database.read(lambda s: _cursor(s, ref.id))
        while True:
            after = 0 if cursor is None else max(cursor - OVERLAP, 0)
            got = await self.hub.events(ref, NOTIFIER, after, PAGE)
            feed: EventFeed | None = got.value
            if feed is None:
                result.error = got.words
                return result
            if cursor is None:
                start = feed.last_id
                await database.write(partial(_advance, agent_id=ref.id, last=start, expected=None))
                log.info("notifications: agent %s read from its event %d on", ref.name, start)
                return result
            # The overlap's events this process already handled are not handled again (after a
            # restart they are, once: the outbox's keys drop what they queued before).
            seen = self.seen.setdefault(ref.id, set())
            fresh = [e for e in feed.events if e.id not in seen]
            drafts = await self.drafts(ref, fresh)
            if drafts is None:
                result.error = f"{ref.name}: could not read the users' reservations"
                return result
            new_cursor = max([cursor, *(e.id for e in feed.events)])
            mail = self.mail
            queued = await database.write(
                partial(_store, agent_id=ref.id, last=new_cursor, drafts=drafts, mail=mail)
            )
            seen.update(e.id for e in fresh)
            floor = new_cursor - OVERLAP
            seen.difference_update({i for i in seen if i <= floor})
            result.read += len([e for e in feed.events if e.id > cursor])
            result.queued += queued
            if len(feed.events) < PAGE or new_cursor == cursor:
                return result
            cursor = new_cursor


def _cursor(s: Session, agent_id: int) -> int | None:
    row = s.get(NotifyCursor, agent_id)
    return None if row is None else row.last_event_id


def _advance(s: Session, agent_id: int, last: int, expected: int | None) -> None:
    row = s.get(NotifyCursor, agent_id)
    if row is None:
        s.add(NotifyCursor(agent_id=agent_id, last_event_id=last, updated_at=utcnow()))
    elif expected is None or row.last_event_id <= last:
        row.last_event_id = max(row.last_event_id, last)
        row.updated_at = utcnow()


def _store(s: Session, agent_id: int, last: int, drafts: list[Draft], mail: bool) -> int:
    added = queue_drafts(s, drafts, mail=mail)
    _advance(s, agent_id, last, last)
    return added
