"""`pisctl agents`, `nodes`, `schedule`, `envs`: what there is and when it is free."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import typer

from piseduce.client import models as m
from piseduce.client import picking
from piseduce.client.cli import output
from piseduce.client.cli.common import MAX_HOURS, AgentOpt, JsonOpt, client, number, parse_start
from piseduce.client.sync import Client

FilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        "-f",
        metavar="FILTER",
        help="PROP=VALUE, PROP!=VALUE, PROP>=N or PROP<=N (units: memory>=4G), as on Reserve; repeat to AND.",
    ),
]


def short_props(props: dict[str, Any], width: int = 60) -> str:
    text = " ".join(f"{k}={v}" for k, v in sorted(props.items()) if not isinstance(v, dict | list))
    return text if len(text) <= width else text[: width - 1] + "…"


def agents(json_out: JsonOpt = False) -> None:
    """The agents and their state."""
    with client() as api:
        found = api.agents()
    if json_out:
        output.print_json(found)
        return
    output.table(
        ("agent", "type", "state", "features"),
        ((a.name, a.type, a.state, ",".join(a.features)) for a in found),
        empty="No agent.",
    )


def nodes(
    filters: FilterOpt = None,
    agent: AgentOpt = None,
    free: Annotated[
        float | None,
        typer.Option(
            "--free",
            metavar="HOURS",
            parser=number("--free", "hours", 0.01, MAX_HOURS),
            help="Only nodes available and free for this many hours from --start.",
        ),
    ] = None,
    start: Annotated[
        str, typer.Option("--start", metavar="WHEN", help="With --free: `now` or a date and time.")
    ] = "now",
    json_out: JsonOpt = False,
) -> None:
    """The nodes of every agent (or one), with their properties; filters as on the Reserve page."""
    with client() as api:
        if free is None:
            found = api.nodes(filters or [], agent)
        else:
            found = api.free_nodes(filters or [], hours=free, start=parse_start(start), agent=agent)
        if json_out:
            output.print_json(found)
            return
        state = usage(api, agent)
    output.table(
        ("agent", "node", "type", "state", "properties"),
        ((n.agent, n.name, n.type, state(n), short_props(n.properties)) for n in found),
        empty="No node matches.",
    )


def usage(api: Client, agent: str | None) -> Callable[[m.Node], str]:
    """A node's state as a user means it, now: `in use (yours: KEY deployed)`, `booked now` (by
    someone else), `free`, or the operators' status (maintenance, broken...) when not available.
    The API's own `status` only says whether the operators let the node be booked."""
    now = dt.datetime.now(dt.UTC)
    mine = {
        (r.agent, r.node): r
        for r in api.reservations()
        if r.status not in m.GONE and r.start and r.end and r.start <= now < r.end
    }
    taken = {
        (row.agent, row.node)
        for row in api.schedule(now, now + dt.timedelta(minutes=1), agent)
        for s in row.slots
        if s.start <= now < s.end
    }

    def state(n: m.Node) -> str:
        r = mine.get((n.agent, n.name))
        if r is not None:
            return f"in use (yours: {r.key} {r.status})"
        if (n.agent, n.name) in taken:
            return "booked now"
        return "free" if n.status == picking.AVAILABLE else n.status

    return state


def schedule(
    start: Annotated[
        str, typer.Option("--start", metavar="WHEN", help="`now` or a date and time (your zone).")
    ] = "now",
    hours: Annotated[
        float,
        typer.Option(
            "--hours",
            metavar="HOURS",
            parser=number("--hours", "hours", 0.1, 24 * 31),
            help="How far to look.",
        ),
    ] = 24,
    agent: AgentOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Who holds which node when (your bookings marked), from --start for --hours."""
    begin_text = parse_start(start)
    begin = dt.datetime.now(dt.UTC) if begin_text == "now" else dt.datetime.fromisoformat(begin_text)
    end = begin + dt.timedelta(hours=hours)
    with client() as api:
        rows = api.schedule(begin, end, agent)
    if json_out:
        output.print_json(rows)
        return
    lines = []
    for row in rows:
        for s in row.slots:
            who = f"mine ({s.bin})" if s.mine and s.bin else "mine" if s.mine else "busy"
            lines.append((row.agent, row.node, output.local(s.start), output.local(s.end), who))
    output.table(
        ("agent", "node", "from", "to", ""),
        lines,
        empty=f"Every node is free from {output.local(begin)} to {output.local(end)}.",
    )


def envs(agent: AgentOpt = None, json_out: JsonOpt = False) -> None:
    """The environments (OS images, Kadeploy environments, firmwares) each agent offers."""
    with client() as api:
        found = api.environments(agent)
    if json_out:
        output.print_json(found)
        return
    output.table(
        ("agent", "name", "default", "description"),
        ((e.agent, e.name, "yes" if e.default else "", e.description) for e in found),
        empty="No environment.",
    )
