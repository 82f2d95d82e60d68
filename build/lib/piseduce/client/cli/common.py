"""What every pisctl command shares: its options, the client of the saved login, the key parsing."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Annotated

import typer

from piseduce.client.cli import credentials
from piseduce.client.errors import PiseduceError
from piseduce.client.sync import Client

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON (for scripts).")]
AgentOpt = Annotated[
    str | None,
    typer.Option("--agent", metavar="AGENT", help="Only this agent's (its name, as `nodes` shows)."),
]


class UsageError(PiseduceError):
    """Bad words on the command line (exit 2, like a Typer usage error)."""


def number(option: str, unit: str, low: float, high: float | None = None) -> Callable[[str], float]:
    """A parser for a real-number option: finite, above `low` (and at most `high`), or one line
    naming the option and what it got. Typer's own `min=` lets `nan` and `inf` through (neither
    compares below anything) and says `>= 0.01` for `nan`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low:
            raise UsageError(f"{option} must be a number of {unit} above {low:g} (got {text[:40]})")
        if high is not None and value > high:
            raise UsageError(f"{option} must be at most {high:g} {unit} (got {text[:40]})")
        return value

    parse.__name__ = unit  # Typer shows the parser's name as the metavar
    return parse


def whole(option: str, low: int = 1) -> Callable[[str], int]:
    """A parser for a count: a whole number from `low`, or one line naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = low - 1
        if value < low:
            raise UsageError(f"{option} must be a whole number from {low} (got {text[:40]})")
        return value

    parse.__name__ = "N"
    return parse


MAX_HOURS = 24 * 366  # the API's bound on a booking's and an extension's length
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        parser=number("--timeout", "seconds", 1),
        help="Give up waiting after this many seconds (exit 1).",
    ),
]


def client() -> Client:
    login = credentials.load()
    return Client(login.url, login.token)


def parse_start(text: str) -> str:
    """`now`, or a date and time (ISO-8601; without an offset, in this shell's zone) -> the API's."""
    if text.strip().lower() == "now":
        return "now"
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--start {text[:40]!r}: write `now` or a date and time such as 2025-12-02T14:00 (your zone) "
            "or 2025-12-02T14:00+01:00"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # the viewer's zone, as the pages read a time
    return when.isoformat()


def parse_values(pairs: list[str]) -> dict[str, str]:
    """`--set key=value` (repeated) -> {key: value}."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {pair[:60]!r}: write KEY=VALUE (a field of the deploy form)")
        values[key.strip()] = value
    return values
