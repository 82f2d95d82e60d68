"""How pisctl prints: JSON on stdout for scripts (`--json`: what the API answered), tables for
people, times in the viewer's zone (the `TZ` of this shell), messages and progress on stderr."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def as_data(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, list | tuple):
        return [as_data(v) for v in value]
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(as_data(value), indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def local(t: dt.datetime | str | None) -> str:
    """A time as the pages write theirs, in this shell's zone: `Tue 02 Dec 2025 14:00 CET`."""
    if not t:
        return ""
    if isinstance(t, str):
        try:
            parsed = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            return t
        t = parsed
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone().strftime("%a %d %b %Y %H:%M %Z")


# Columns never cut nor wrapped: what a user copies into the next command (the others fold).
KEEP = ("key", "node")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> None:
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not cells:
        err.print(empty)
        return
    t = Table(box=None, pad_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        if name in KEEP:
            t.add_column(name, no_wrap=True, min_width=max(len(name), *(len(row[i]) for row in cells)))
        else:
            t.add_column(name, overflow="fold")
    for row in cells:
        t.add_row(*row)
    out.print(t)


def say(text: str) -> None:
    err.print(text, markup=False)


def line(text: str) -> None:
    """An answer's line, on standard output (what `say` writes is advice, on standard error)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def percent(progress: float | None) -> str:
    return "" if progress is None else f"{round(progress * 100)}%"
