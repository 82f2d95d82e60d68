"""The calendar of a window (GET /api/schedule) as JSON text, cached per window and generation.

A site of 5,000 nodes and 100,000 bookings holds some 30,000 slots in a week: reading and encoding
them is most of an answer's cost, and the Reserve page asks the same day-aligned windows again and
again. A window's slots are read once per calendar generation (calendar_generation.py: triggers
bump it on every change), encoded once as the JSON everyone but their owner sees (start and end
only), and each answer joins those pieces, re-encoding only the nodes the caller holds (or all
nodes, for admins) and those with remote jobs. Only nodes with a slot are listed: the node list is
GET /api/nodes.

A worker reads the coming week when it starts (warm_up, from the app's lifespan, in a thread off
the event loop: some 200 ms at 5,000 nodes), so the first Reserve page is built from cached days,
not read cold; a worker that finds the changes table pruned past its generation reads anew at the
next request (not warmed again).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from piseduce.agent import calendar_generation, gc_pause, holds
from piseduce.agent.drivers.base import BusyInterval

WINDOWS = 8  # windows kept per worker (a week of 5,000 busy nodes is a few MB)

# (start, end, owner, reservation id, status) with ISO-8601 UTC times.
Slot = tuple[str, str, str, int, str]


# A slot as a day keeps it, one flat tuple (a nested one was one more object per slot for the
# collector): (start key, busy-until key (holds.TEXT_FORMAT), node, its JSON as others see it, *the Slot).
Entry = tuple[str, str, str, str, str, str, str, int, str]
# A node's entries, by start. Days and windows keep tuples of tuples of text, not lists: the
# collector stops tracking those after one look (lists it scans at every full collection, some
# 90,000 of them for a cached week at 5,000 nodes).
Entries = tuple[Entry, ...]
DAY = dt.timedelta(days=1)
DAYS = 64  # days kept per worker (a day of 5,000 busy nodes is some 5,000 slots)
WARM_DAYS = 7  # days read when a worker starts (warm_up): the Reserve page's coming week
MAX_SPANS = 1000  # more changed spans since the cache's generation: everything is read again


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _key(t: dt.datetime) -> str:
    """A time as the rows' text (holds.TEXT_FORMAT), which orders as the times do."""
    return t.astimezone(dt.UTC).strftime(holds.TEXT_FORMAT)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _hidden(slot: Slot) -> str:
    return f'{{"start":"{slot[0]}","end":"{slot[1]}"}}'


def _shown(slot: Slot, mine: bool) -> str:
    a, b, owner, rid, status = slot
    return (
        f'{{"start":"{a}","end":"{b}","owner":{_quoted(owner)},"mine":{"true" if mine else "false"},'
        f'"reservation_id":{rid},"status":{_quoted(status)}}}'
    )


@dataclass
class Day:
    """One UTC day's slots at one generation, grouped by node, with the JSON of those that start
    in it joined once: a window joins whole days' pieces, filtering slot by slot only its first day
    (which also holds the slots begun before it) and a last day it ends within."""

    end_key: str
    overlapping: dict[str, Entries]  # node → its slots holding it in the day, by start
    starting: dict[str, tuple[Entries, str]]  # node → its slots starting in the day, their JSON
    owners: dict[str, set[str]]  # owner → the nodes of their slots starting in the day

    @classmethod
    def of(cls, day: dt.datetime, entries: Iterable[Entry]) -> Day:
        lo = _key(day)
        overlapping: dict[str, list[Entry]] = {}
        starting: dict[str, list[Entry]] = {}
        owners: dict[str, set[str]] = {}
        for e in entries:
            overlapping.setdefault(e[2], []).append(e)
            if e[0] >= lo:
                starting.setdefault(e[2], []).append(e)
                owners.setdefault(e[6], set()).add(e[2])
        joined = {n: (tuple(es), ",".join(e[3] for e in es)) for n, es in starting.items()}
        return cls(_key(day + DAY), {n: tuple(es) for n, es in overlapping.items()}, joined, owners)

    def with_nodes(self, day: dt.datetime, fresh: dict[str, list[Entry]]) -> Day:
        """A copy with these nodes' slots replaced (`fresh`: each node's slots around the day, by
        start): requests in other threads may be reading this one."""
        lo = _key(day)
        overlapping, starting, owners = dict(self.overlapping), dict(self.starting), dict(self.owners)
        for node, entries in fresh.items():
            for e in starting.pop(node, ((), ""))[0]:
                owners[e[6]] = owners[e[6]] - {node}
            overlapping.pop(node, None)
            held = tuple([e for e in entries if e[0] < self.end_key and e[1] > lo])
            begun = tuple([e for e in held if e[0] >= lo])
            if held:
                overlapping[node] = held
            if begun:
                starting[node] = (begun, ",".join(e[3] for e in begun))
                for e in begun:
                    owners[e[6]] = owners.get(e[6], set()) | {node}
        return Day(self.end_key, overlapping, starting, owners)


# A node's slots in a window, in pieces: (the entries, their JSON as others see them).
Segment = tuple[Entries, str]


@dataclass
class Window:
    """One window's slots at one generation, and their JSON pieces."""

    generation: int
    start: dt.datetime
    end: dt.datetime
    present: frozenset[str]
    segments: dict[str, tuple[Segment, ...]]  # node → its slots in the window by start, in pieces
    held_by: dict[str, set[str]]  # owner → the nodes they hold in the window
    keys: dict[str, str]  # node → its name as JSON
    hidden: dict[str, str]  # node → '"name":[slots as others see them]', by name
    admin: dict[str, str] = field(default_factory=dict)  # the same for admins, made when asked

    @classmethod
    def read(
        cls,
        generation: int,
        window: tuple[dt.datetime, dt.datetime],
        present: frozenset[str],
        days: Sequence[Day],
        keys: dict[str, str],
    ) -> Window:
        """The window from the days it covers, in order (the first holds the window's start);
        `keys`: the nodes' names as JSON, kept per generation."""
        lo, hi = _key(window[0]), _key(window[1])
        segments: dict[str, list[Segment]] = {}
        held_by: dict[str, set[str]] = {}

        def filtered(by_node: Iterable[tuple[str, Entries]]) -> None:
            for node, entries in by_node:
                kept = tuple([e for e in entries if e[0] < hi and e[1] > lo])
                if kept:
                    segments.setdefault(node, []).append((kept, ",".join(e[3] for e in kept)))
                    for e in kept:
                        held_by.setdefault(e[6], set()).add(node)

        for i, day in enumerate(days):
            if i == 0:
                filtered(day.overlapping.items())
            elif day.end_key <= hi:  # a whole day: every slot starting in it is in the window
                for node, segment in day.starting.items():
                    if node in segments:
                        segments[node].append(segment)
                    else:
                        segments[node] = [segment]
                for owner, nodes in day.owners.items():
                    held_by.setdefault(owner, set()).update(nodes)
            else:
                filtered((n, seg[0]) for n, seg in day.starting.items())
        ordered = {n: tuple(segs) for n, segs in sorted(segments.items())}
        for n in ordered:
            if n not in keys:
                keys[n] = _quoted(n)
        hidden = {n: f"{keys[n]}:[{','.join(seg[1] for seg in segs)}]" for n, segs in ordered.items()}
        return cls(generation, *window, present, ordered, held_by, keys, hidden)

    def with_nodes(self, fresh: dict[str, list[Entry]], present: frozenset[str]) -> Window:
        """A copy with these nodes' slots replaced (`fresh`: each node's slots around the window,
        by start) and the nodes present now: requests in other threads may be reading this one."""
        lo, hi = _key(self.start), _key(self.end)
        segments, hidden, held_by = dict(self.segments), dict(self.hidden), dict(self.held_by)
        admin = dict(self.admin)
        added = False
        for node, entries in fresh.items():
            for segment in segments.pop(node, ()):
                for e in segment[0]:
                    held_by[e[6]] = held_by[e[6]] - {node}
            hidden.pop(node, None)
            admin.pop(node, None)
            kept = tuple([e for e in entries if e[0] < hi and e[1] > lo])
            if not kept:
                continue
            added = added or node not in self.segments
            joined = ",".join(e[3] for e in kept)
            segments[node] = ((kept, joined),)
            key = self.keys.setdefault(node, _quoted(node))
            hidden[node] = f"{key}:[{joined}]"
            for e in kept:
                held_by[e[6]] = held_by.get(e[6], set()) | {node}
        ordered = dict(sorted(segments.items())) if added else segments
        window = Window(
            self.generation, self.start, self.end, present, ordered, held_by, self.keys, hidden
        )
        if self.admin:
            window.admin = admin
            for node in fresh:
                if node in ordered:
                    admin[node] = window._node(node, None, True, ())
        return window

    def slots(self, node: str) -> list[Slot]:
        return [e[4:] for segment in self.segments.get(node, ()) for e in segment[0]]

    def _node(self, node: str, me: str | None, admin: bool, remote: Sequence[BusyInterval]) -> str:
        """`node`'s slots as JSON for `me` (None: nobody's own, the admins' shared pieces)."""
        pieces: list[tuple[dt.datetime, str]] = []
        for s in self.slots(node):
            mine = s[2] == me
            text = _shown(s, mine) if admin or mine else _hidden(s)
            pieces.append((dt.datetime.fromisoformat(s[0].replace("Z", "+00:00")), text))
        for b in remote:
            text = f'{{"start":"{iso(b.start)}","end":"{iso(b.end)}","reason":{_quoted(b.reason)}}}'
            pieces.append((b.start.astimezone(dt.UTC), text))
        pieces.sort(key=lambda p: p[0])
        key = self.keys.get(node) or _quoted(node)
        return f"{key}:[{','.join(t for _, t in pieces)}]"

    def nodes_json(self, user: str, admin: bool, remote: Iterable[BusyInterval]) -> str:
        """The answer's "nodes" object as `user` sees it, with the driver's remote jobs merged."""
        by_node: dict[str, list[BusyInterval]] = {}
        for b in remote:
            if b.node in self.present and holds.overlaps(b.start, b.end, self.start, self.end):
                by_node.setdefault(b.node, []).append(b)
        if admin and not self.admin:
            self.admin = {n: self._node(n, None, True, ()) for n in self.segments}
        base = self.admin if admin else self.hidden
        redo = set(by_node) | self.held_by.get(user, set())
        names = sorted(set(self.segments) | set(by_node)) if by_node else list(self.segments)
        parts = [self._node(n, user, admin, by_node.get(n, ())) if n in redo else base[n] for n in names]
        return "{" + ",".join(parts) + "}"


def _entry(row: holds.SlotRow) -> Entry:
    """A row as a day keeps it: its times' text are the keys; their ISO-8601 (iso's: no zero
    microseconds) is made by slicing, cheaper here than in SQL and than parsing."""
    node, a, b, owner, rid, status, held = row
    start = f"{a[:10]}T{a[11:19] if a.endswith('.000000') else a[11:]}Z"
    end = f"{b[:10]}T{b[11:19] if b.endswith('.000000') else b[11:]}Z"
    return (a, held, node, f'{{"start":"{start}","end":"{end}"}}', start, end, owner, rid, status)


def _day_of(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _touched(spans: Iterable[calendar_generation.Change], lo: dt.datetime, hi: dt.datetime) -> set[str]:
    """The nodes whose changed spans overlap [lo, hi)."""
    return {node for node, a, b in spans if a < hi and b > lo}


class CalendarCache:
    """The last WINDOWS windows asked and the UTC days they were built from, valid at the cache's
    generation: a day's slots are read once, so a window nobody asked yet (the Reserve page's next
    48 hours, a week on) costs no query once its days were read by another. When the generation
    moves, the nodes the changes since touched (calendar_changes) are read again and patched into
    the days and windows they overlap: a booking costs one small query, not the whole week."""

    def __init__(self) -> None:
        self._windows: OrderedDict[tuple[dt.datetime, dt.datetime], Window] = OrderedDict()
        self._days: OrderedDict[dt.datetime, Day] = OrderedDict()
        self._generation: int | None = None
        self._present: frozenset[str] | None = None
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()  # the state above
        self._syncing = threading.Lock()  # one worker thread reads the changes at a time

    def _clear(self, generation: int) -> None:
        self._windows.clear()
        self._days.clear()
        self._present, self._keys, self._generation = None, {}, generation

    def _sync(self, session: Session, generation: int, bound: dt.timedelta) -> int:
        """Bring the cache to `generation` or newer: the nodes' slots the changes since touched
        read again in the days and windows cached; the generation it is at."""
        with self._syncing:
            have = self._generation
            if have is not None and have >= generation:
                return have
            changes = None if have is None else calendar_generation.changes_since(session, have)
            if changes is None or changes.everything or len(changes.spans) > MAX_SPANS:  # read anew
                newest = generation if changes is None else max(generation, changes.generation)
                with self._lock:
                    self._clear(newest)
                return newest
            with self._lock:
                days, windows = dict(self._days), dict(self._windows)
            touched_days = {d: _touched(changes.spans, d, d + DAY) for d in days}
            touched_windows = {w: _touched(changes.spans, *w) for w in windows}
            nodes = set().union(*touched_days.values(), *touched_windows.values())
            fresh: dict[str, list[Entry]] = {n: [] for n in nodes}
            present = self._present
            if nodes:
                if changes.nodes or present is None:  # a node added, removed, renamed or gone
                    present = frozenset(holds.present_nodes(session))
                # One query for their slots over every day and window touched.
                spans = [(d, d + DAY) for d, ns in touched_days.items() if ns]
                spans += [w for w, ns in touched_windows.items() if ns]
                lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
                for row in holds.slots_text(session, lo, hi, bound, nodes=sorted(nodes)):
                    if row[0] in present:
                        fresh[row[0]].append(_entry(row))
            elif changes.nodes:  # nothing cached: read with the next window
                present = None
            with self._lock:
                for d, ns in touched_days.items():
                    if ns and d in self._days:
                        self._days[d] = days[d].with_nodes(d, {n: fresh[n] for n in ns})
                for w, ns in touched_windows.items():
                    if ns and w in self._windows and present is not None:
                        self._windows[w] = windows[w].with_nodes({n: fresh[n] for n in ns}, present)
                # Read by other threads since the copy above, perhaps before the changes: read again.
                for d in [d for d in self._days if d not in days and _touched(changes.spans, d, d + DAY)]:
                    del self._days[d]
                for w in [w for w in self._windows if w not in windows and _touched(changes.spans, *w)]:
                    del self._windows[w]
                for window in self._windows.values():
                    window.generation = changes.generation
                self._generation, self._present = changes.generation, present
                return changes.generation

    def _entries(
        self, session: Session, generation: int, start: dt.datetime, end: dt.datetime, bound: dt.timedelta
    ) -> tuple[frozenset[str], list[Day]]:
        days = [_day_of(start)]
        while days[-1] + DAY < end:
            days.append(days[-1] + DAY)
        with self._lock:
            current = self._generation == generation
            present = self._present if current else None
            have = {d: self._days[d] for d in days if d in self._days} if current else {}
        missing = [d for d in days if d not in have]
        if present is None:
            present = frozenset(holds.present_nodes(session))
        if missing:
            # One query for the missing days' span; each row goes to every day it holds.
            lo, hi = missing[0], missing[-1] + DAY
            rows: dict[dt.datetime, list[Entry]] = {d: [] for d in missing}
            spans = [(_key(d), _key(d + DAY), d) for d in rows]
            for row in holds.slots_text(session, lo, hi, bound):
                if row[0] not in present:
                    continue
                entry = _entry(row)
                for d_lo, d_hi, d in spans:
                    if entry[0] < d_hi and entry[1] > d_lo:
                        rows[d].append(entry)
            read = {d: Day.of(d, entries) for d, entries in rows.items()}
            have.update(read)
            with self._lock:
                if self._generation == generation:
                    self._present = present
                    self._days.update(read)
                    while len(self._days) > DAYS:
                        self._days.popitem(last=False)
        return present, [have[d] for d in days]

    def window(self, session: Session, start: dt.datetime, end: dt.datetime, bound: dt.timedelta) -> Window:
        # The counter first: rows read after it are at least as new, never staler than their tag.
        now = calendar_generation.current(session)
        key = (start, end)
        if now is None:  # nothing may be cached: read the window alone
            fresh = CalendarCache()
            present, days = fresh._entries(session, -1, start, end, bound)
            return Window.read(-1, key, present, days, {})
        generation = self._sync(session, now, bound)
        with self._lock:
            hit = self._windows.get(key)
            if hit is not None and hit.generation == generation:
                self._windows.move_to_end(key)
                return hit
        with self._lock:
            keys = self._keys if self._generation == generation else {}
        with gc_pause.paused():
            present, days = self._entries(session, generation, start, end, bound)
            window = Window.read(generation, key, present, days, keys)
        with self._lock:
            if self._generation == generation:
                self._windows[key] = window
                self._windows.move_to_end(key)
                while len(self._windows) > WINDOWS:
                    self._windows.popitem(last=False)
        return window

    def warm_up(self, session: Session, bound: dt.timedelta, now: dt.datetime | None = None) -> None:
        """Read the coming WARM_DAYS UTC days (today's included) as one window, so that the
        windows the Reserve page asks next are built from cached days."""
        day = _day_of(now or dt.datetime.now(dt.UTC))
        self.window(session, day, day + WARM_DAYS * DAY, bound)
