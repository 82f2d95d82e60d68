"""iCalendar (RFC 5545) text, written by hand: a VCALENDAR of VEVENTs, TEXT values escaped
(3.3.11), lines folded at 75 octets without cutting a UTF-8 character (3.1), CRLF line ends,
times in UTC (`19980119T070000Z`, 3.3.5 form #2). Only what the calendar feed needs."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PRODID = "-//PiSeduce//Reservations//EN"
LIMIT = 75  # octets per line, CRLF excluded
# Control characters are not TEXT (3.3.11: no CTL but HTAB); a newline is written as \n.
_CTL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def text(value: str) -> str:
    """A TEXT value: backslash, semicolon, comma and newlines escaped, control characters dropped."""
    value = _CTL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    return value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def utc(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def fold(line: str) -> str:
    """One content line folded: at most 75 octets a line, continuations starting with a space."""
    data = line.encode()
    if len(data) <= LIMIT:
        return line
    parts: list[str] = []
    start, room = 0, LIMIT
    while start < len(data):
        end = min(start + room, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a UTF-8 character: back off
            end -= 1
        parts.append(data[start:end].decode())
        start, room = end, LIMIT - 1  # a continuation's leading space counts
    return "\r\n ".join(parts)


@dataclass(frozen=True)
class Event:
    uid: str
    start: dt.datetime
    end: dt.datetime
    summary: str
    description: str
    modified: dt.datetime
    sequence: int
    cancelled: bool = False


def calendar(name: str, events: Iterable[Event], stamp: dt.datetime) -> str:
    """The whole VCALENDAR, CRLF-ended lines."""
    lines: list[str] = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:{PRODID}",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        f"X-WR-CALNAME:{text(name)}",
    ]
    for e in events:
        lines += _event(e, stamp)
    lines.append("END:VCALENDAR")
    return "".join(fold(line) + "\r\n" for line in lines)


def _event(e: Event, stamp: dt.datetime) -> Sequence[str]:
    return [
        "BEGIN:VEVENT",
        f"UID:{text(e.uid)}",
        f"DTSTAMP:{utc(stamp)}",
        f"DTSTART:{utc(e.start)}",
        f"DTEND:{utc(e.end)}",
        f"SUMMARY:{text(e.summary)}",
        f"DESCRIPTION:{text(e.description)}",
        f"LAST-MODIFIED:{utc(e.modified)}",
        f"SEQUENCE:{e.sequence}",
        f"STATUS:{'CANCELLED' if e.cancelled else 'CONFIRMED'}",
        "TRANSP:OPAQUE",
        "END:VEVENT",
    ]
