"""`pisctl reserve`, `status`, `extend`, `reboot`, `redeploy`, `release`: booking and acting on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from piseduce.client import models as m
from piseduce.client.backoff import Backoff
from piseduce.client.cli import output
from piseduce.client.cli.catalog import FilterOpt
from piseduce.client.cli.common import (
    MAX_HOURS,
    JsonOpt,
    TimeoutOpt,
    UsageError,
    client,
    number,
    parse_start,
    whole,
)
from piseduce.client.cli.following import follow
from piseduce.client.errors import ApiError, PiseduceError, describe_detail
from piseduce.client.sync import Client

T = TypeVar("T")
KeysArg = Annotated[
    list[str] | None, typer.Argument(metavar="KEY", help="Reservation keys AGENT/ID (as `status` shows).")
]
BinOpt = Annotated[str | None, typer.Option("--bin", metavar="NAME", help="Every reservation of this bin.")]
# A reservation that has not ended yet (what --bin selects to act on).
OPEN = (m.CONFIGURING, m.SCHEDULED, m.DEPLOYING, m.DEPLOYED, m.FAILED)


def rows(found: list[m.Reservation]) -> None:
    output.table(
        ("key", "node", "bin", "status", "step", "progress", "from", "to"),
        (
            (
                r.key,
                r.node,
                r.bin,
                r.status,
                r.step_words,
                output.percent(r.progress),
                output.local(r.start),
                output.local(r.end),
            )
            for r in found
        ),
        empty="No reservation.",
    )


# What to book (or look a slot up for): `reserve` and `next-slot` take the same options.
CountOpt = Annotated[
    int | None,
    typer.Option(
        "--count", "-n", metavar="N", parser=whole("--count"), help="How many nodes matching --filter."
    ),
]
NodesOpt = Annotated[
    list[str] | None, typer.Option("--nodes", metavar="AGENT/NODE", help="AGENT/NODE (repeat, or a,b,c).")
]
HoursOpt = Annotated[
    float,
    typer.Option(
        "--hours",
        "-t",
        metavar="HOURS",
        parser=number("--hours", "hours", 0.01, MAX_HOURS),
        help="Duration in hours.",
    ),
]


def node_refs(values: list[str]) -> list[str]:
    """--nodes, repeated or comma-separated: AGENT/NODE each."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def which(nodes: list[str] | None, count: int | None) -> list[str]:
    """The --nodes references, once it is checked that exactly one of --nodes and --count is given."""
    refs = node_refs(nodes or [])
    if bool(refs) == (count is not None):
        raise UsageError("give either --nodes AGENT/NODE… or --count N (with --filter to choose)")
    return refs


def book_until_free(api: Client, timeout: float, **booking: object) -> list[m.Reservation]:
    """Book; with a timeout, a 409 (not free) is asked again with back-off until it is booked,
    like a job waiting in OAR's queue."""
    deadline, backoff = time.monotonic() + timeout, Backoff(first=2.0, longest=30.0)
    while True:
        try:
            return api.reserve(**booking)  # type: ignore[arg-type]
        except ApiError as exc:
            if exc.status != 409 or timeout <= 0 or time.monotonic() >= deadline:
                raise
            pause = min(backoff.next(False), max(0.0, deadline - time.monotonic()))
            output.say(f"not free yet ({exc.detail}); asking again in {pause:.0f} s")
            time.sleep(pause)


def reserve(
    count: CountOpt = None,
    nodes: NodesOpt = None,
    filters: FilterOpt = None,
    start: Annotated[
        str, typer.Option("--start", metavar="WHEN", help="`now` or a date and time (your zone).")
    ] = "now",
    hours: HoursOpt = 1.0,
    bin: Annotated[
        str, typer.Option("--bin", metavar="NAME", help="A name grouping the nodes of one experiment.")
    ] = "",
    wait: Annotated[bool, typer.Option("--wait", help="While the nodes are not free, ask again.")] = False,
    timeout: TimeoutOpt = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Book nodes (all or nothing, across agents): by name with --nodes, or --count N --filter …."""
    refs = which(nodes, count)
    with client() as api:
        booked = book_until_free(
            api,
            timeout if wait else 0,
            nodes=refs,
            count=count,
            filters=filters or [],
            start=parse_start(start),
            hours=hours,
            bin=bin,
        )
    if json_out:
        output.print_json(booked)
        return
    rows(booked)
    output.say(
        f"Booked {len(booked)} node(s); next: pisctl deploy --bin {bin}"
        if bin
        else f"Booked {len(booked)} node(s); next: pisctl deploy {' '.join(r.key for r in booked)}"
    )


def select(api: Client, keys: list[str] | None, bin: str | None) -> list[str]:
    """The keys given, or those of the bin's open reservations; one of the two is needed."""
    if keys and bin:
        raise UsageError("give reservation keys or --bin, not both")
    if keys:
        return keys
    if bin is None:
        raise UsageError("say which reservations: their keys (AGENT/ID) or --bin NAME")
    found = [r.key for r in api.reservations(bin=bin) if r.status in OPEN]
    if not found:
        raise PiseduceError(f"no open reservation in bin {bin!r} (pisctl status lists yours)")
    return found


def status(
    keys: KeysArg = None,
    bin: BinOpt = None,
    all_users: Annotated[bool, typer.Option("--all", help="Admins: every user's reservations.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Your reservations (status, step, progress); one key: its details and events too."""
    with client() as api:
        detailed = [api.reservation(k) for k in keys or ()]
        found: list[m.Reservation] = list(detailed) if keys else api.reservations(bin=bin, all=all_users)
    if json_out:
        output.print_json(detailed[0] if len(detailed) == 1 else found)
        return
    rows(found)
    if len(detailed) == 1:
        for label, value in details(detailed[0]):
            output.out.print(f"{label}: {value}", markup=False)
        if ended := ended_line(detailed[0]):
            output.out.print(ended, markup=False)
        for e in detailed[0].events[-20:]:
            output.out.print(f"{output.local(e.time)}  {e.step:<16} {e.message}", markup=False)


def ended_line(r: m.ReservationDetail) -> str:
    """When a destroyed, released or expired reservation ended: the API keeps its planned `end`
    and has no time of ending, so the time of its last event (the destroy's) is the one shown."""
    if r.status not in ("ended", "cancelled") or not r.events:
        return ""
    last = max(r.events, key=lambda e: e.n)  # numbered in the order they happened
    when, planned = output.local(last.time), output.local(r.end)
    return f"{r.status}: {when} (its last event; planned until {planned})"


def readable(value: object) -> str:
    """A value of the API as a person reads it: `a=1, b=2`, `x, y`, yes/no; "" for nothing."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={readable(v)}" for k, v in value.items() if readable(v))
    if isinstance(value, list | tuple):
        return ", ".join(readable(v) for v in value if readable(v))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def details(r: m.Reservation) -> list[tuple[str, str]]:
    """One reservation's lines beyond its row: how to log in and what else its agent says, each
    `label: value`, the empty ones left out."""
    lines: list[tuple[str, object]] = [("error", r.error)]
    conn = r.connection
    if conn is not None:
        login = conn.command or f"ssh -p {conn.port} {conn.user}@{conn.host}"
        lines += [("log in", login), ("host key", conn.host_key_fingerprint), ("via", conn.jump)]
        lines += [(k.replace("_", " "), v) for k, v in sorted(conn.details.items())]
    if r.actions:
        lines.append(("actions", r.actions))
    if r.energy is not None:
        e = r.energy
        so_far = "" if e.final else " so far"
        lines.append(("energy", f"{e.wh:.2f} Wh{so_far} (mean {e.mean_w:.1f} W, peak {e.peak_w:.1f} W)"))
    shown = [(label, readable(value)) for label, value in lines]
    return [(label, value) for label, value in shown if value]


def refusal(key: str, exc: ApiError) -> str:
    """The API's reason, naming the reservation once (the agents' reasons often name it already)."""
    detail = describe_detail(exc.detail)
    return detail if key in detail else f"{key}: {detail}"


def each(targets: list[str], do: Callable[[str], T]) -> tuple[list[T], list[str]]:
    """`do` on each key: what it returned, and a line for each refusal (the others still done)."""
    done: list[T] = []
    refused: list[str] = []
    for key in targets:
        try:
            done.append(do(key))
        except ApiError as exc:
            refused.append(refusal(key, exc))
    return done, refused


def act(
    keys: list[str] | None,
    bin: str | None,
    json_out: bool,
    do: Callable[[Client, str], m.Reservation],
    verb: str,
    wait: float | None = None,
) -> None:
    """One action on each reservation; every refusal said on its own line, exit 1 if any. With
    `wait` (a timeout), the acted-on reservations are then followed to their end."""
    with client() as api:
        targets = select(api, keys, bin)
        done, refused = each(targets, lambda key: do(api, key))
        for line in refused:
            output.say(f"error: {line}")
        if wait is not None and done:
            follow(api, [r.key for r in done], wait, json_out)
        elif json_out:
            output.print_json(done)
        else:
            for r in done:
                output.say(f"{verb}: {r.key} ({r.node}); follow it with pisctl wait {r.key}")
    if refused:
        raise typer.Exit(1)


WaitOpt = Annotated[bool, typer.Option("--wait", help="Follow them to their end, as deploy --wait.")]


def release(keys: KeysArg = None, bin: BinOpt = None, json_out: JsonOpt = False) -> None:
    """Give nodes back now: they are wiped and released (oardel, openstack lease delete)."""
    with client() as api:
        targets = select(api, keys, bin)
        done, refused = each(targets, api.release)
    if json_out:
        output.print_json(done)
    for r in [] if json_out else done:
        output.say(f"released: {r.key} ({r.node}), now {r.status}")
    for line in refused:
        output.say(f"error: {line}")
    if refused:
        raise typer.Exit(1)


def reboot(
    keys: KeysArg = None,
    bin: BinOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Hard reboot (a power cycle on Raspberry Pis)."""
    act(keys, bin, json_out, lambda api, k: api.reboot(k), "rebooting", timeout if wait else None)


def redeploy(
    keys: KeysArg = None,
    bin: BinOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Deploy again with the same values."""
    act(keys, bin, json_out, lambda api, k: api.redeploy(k), "redeploying", timeout if wait else None)


def extend(
    keys: KeysArg = None,
    bin: BinOpt = None,
    hours: Annotated[
        float | None,
        typer.Option(
            "--hours",
            "-t",
            metavar="HOURS",
            parser=number("--hours", "hours", 0.01, MAX_HOURS),
            help="Hours to add. Without it: the reservation's current length (from its start to its "
            "end now, as the web UI's Extend button), so each extend doubles it.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Move the end later (never into the next booking); says how much was added and the new end."""
    with client() as api:
        targets = select(api, keys, bin)
        # The end before and after: what was added is said, not left to guess.
        done, refused = each(targets, lambda key: (api.reservation(key), api.extend(key, hours)))
    if json_out:
        output.print_json([after for _, after in done])
    for before, after in [] if json_out else done:
        added = (after.end - before.end).total_seconds() / 3600 if after.end and before.end else None
        by = f" by {round(added, 2):g} h" if added is not None else ""
        output.say(f"extended: {after.key} ({after.node}){by}, now ends {output.local(after.end)}")
    for line in refused:
        output.say(f"error: {line}")
    if refused:
        raise typer.Exit(1)
