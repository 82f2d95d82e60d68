"""Grid'5000's usage policy for the `day` and `night` job types: a `day` job runs within one day
(weekdays 09:00-19:00, site time), a `night` job within one night (19:00 to 09:00 the next day, or
the whole week-end from Friday 19:00 to Monday 09:00). A job of either type that is submitted
outside its period waits for the next one; a walltime that no such period can hold is refused."""

from __future__ import annotations

import datetime as dt

from piseduce.sim.g5k.oar import SITE_TZ

DAY_START, DAY_END = 9, 19
SEARCH_DAYS = 15


def _at(day: dt.date, hour: int) -> float:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=SITE_TZ).timestamp()


def periods(kind: str, since: float) -> list[tuple[float, float]]:
    """The `day` or `night` periods that end after `since`, in order, for the next weeks."""
    first = dt.datetime.fromtimestamp(since, SITE_TZ).date() - dt.timedelta(days=3)
    out: list[tuple[float, float]] = []
    for i in range(SEARCH_DAYS + 3):
        day = first + dt.timedelta(days=i)
        weekday = day.weekday()  # Monday 0 .. Sunday 6
        if kind == "day" and weekday < 5:
            out.append((_at(day, DAY_START), _at(day, DAY_END)))
        elif kind == "night" and weekday < 4:  # Monday..Thursday evenings
            out.append((_at(day, DAY_END), _at(day + dt.timedelta(days=1), DAY_START)))
        elif kind == "night" and weekday == 4:  # the week-end is one long night
            out.append((_at(day, DAY_END), _at(day + dt.timedelta(days=3), DAY_START)))
    return [(b, e) for b, e in out if e > since]


def longest(kind: str) -> int:
    return (DAY_END - DAY_START) * 3600 if kind == "day" else (24 * 3 - DAY_END + DAY_START) * 3600


def fit(kind: str, start: float, duration: float) -> float | None:
    """The earliest time >= start at which a job of `duration` seconds lies in one period."""
    for begin, end in periods(kind, start):
        t = max(begin, start)
        if t + duration <= end:
            return t
    return None


def inside(kind: str, start: float, duration: float) -> bool:
    return fit(kind, start, duration) == start
