"""`pisctl next-slot`: when a booking could next start, all at once (nothing is booked)."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from piseduce.client.cli import output
from piseduce.client.cli.booking import CountOpt, HoursOpt, NodesOpt, which
from piseduce.client.cli.catalog import FilterOpt
from piseduce.client.cli.common import JsonOpt, client, parse_start


def next_slot(
    count: CountOpt = None,
    nodes: NodesOpt = None,
    filters: FilterOpt = None,
    after: Annotated[
        str, typer.Option("--after", metavar="WHEN", help="`now` or a date and time (your zone).")
    ] = "now",
    hours: HoursOpt = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """The earliest start (at or after --after) where --nodes, or --count N --filter …, could be
    booked all at once for --hours, across agents; and the `pisctl reserve` line that books it."""
    refs = which(nodes, count)
    with client() as api:
        slot = api.next_slot(
            nodes=refs, count=count, filters=filters or [], after=parse_start(after), hours=hours
        )
    if json_out:
        output.print_json(slot)
        return
    output.line(f"Free from {output.local(slot.start)} to {output.local(slot.end)} ({slot.hours:g} h):")
    output.line("  " + ", ".join(f"{n.agent}/{n.node}" for n in slot.nodes))
    what = (
        ["--count", str(count)] + [a for f in filters or [] for a in ("--filter", f)]
        if count
        else [a for r in refs for a in ("--nodes", r)]
    )
    line = ["pisctl", "reserve", *what, "--start", slot.start.isoformat(), "--hours", f"{slot.hours:g}"]
    output.line("Book it: " + shlex.join(line))
