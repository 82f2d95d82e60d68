"""Choosing free nodes on this side, so that one booking can name nodes of several kinds (4 Pis,
2 servers and a sensor) and stay all or nothing: the API books a count of one filter at a time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from piseduce.client import models as m

AVAILABLE = "available"


def window(start: dt.datetime | str, hours: float) -> tuple[dt.datetime, dt.datetime]:
    if isinstance(start, str):
        begin = dt.datetime.now(dt.UTC) if start == "now" else dt.datetime.fromisoformat(start)
    else:
        begin = start
    if begin.tzinfo is None:
        begin = begin.astimezone()
    return begin, begin + dt.timedelta(hours=hours)


def free(
    nodes: Iterable[m.Node], schedule: Iterable[m.ScheduleRow], begin: dt.datetime, end: dt.datetime
) -> list[m.Node]:
    """The available nodes with no booking overlapping [begin, end), in the API's order."""
    busy = {
        (row.agent, row.node)
        for row in schedule
        for slot in row.slots
        if slot.start < end and slot.end > begin
    }
    return [n for n in nodes if n.status == AVAILABLE and (n.agent, n.name) not in busy]
