"""Every route of the user API as data: a `Call` says the method, path, query, body and how to read
the answer. `Client` and `AsyncClient` only send calls, so both speak the same API by construction.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError

from piseduce.client import models as m
from piseduce.client.errors import BadValues, PiseduceError

T = TypeVar("T")
API_PREFIX = "/api/v1"
# The actions, each its own POST /reservations/{agent}/{id}/<action> (docs/api.md).
ACTIONS = ("reboot", "redeploy", "destroy", "release", "extend", "bootfiles", "save-environment")

KeyLike = str | m.Reservation


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]
    params: list[tuple[str, str]] = field(default_factory=list)
    body: Any = None
    # A call that changed nothing when refused may be sent again after a 429's Retry-After.
    idempotent: bool = True
    # A caller that handles a partial list itself (a wait) asks for no AgentsUnavailable warning.
    quiet: bool = False

    def __post_init__(self) -> None:
        # JSON has no NaN nor infinity: httpx would raise a bare ValueError while sending.
        if self.body is not None:
            try:
                json.dumps(self.body, allow_nan=False)
            except ValueError:
                raise BadValues(
                    f"{self.method} {self.path}: NaN and infinity cannot be sent; give finite numbers"
                ) from None
            except TypeError as exc:
                raise BadValues(
                    f"{self.method} {self.path}: a value cannot be sent as JSON ({exc})"
                ) from None


MAX_HOURS = 24 * 366  # the API's bound on a booking's and an extension's length


def hours_value(hours: Any, what: str = "hours") -> float:
    """A number of hours the API takes: finite, above 0, at most a year; BadValues otherwise."""
    try:
        value = float(hours)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(hours, bool) or not math.isfinite(value) or not 0 < value <= MAX_HOURS:
        raise BadValues(f"{what} must be a number of hours above 0 and at most {MAX_HOURS} (got {hours!r})")
    return value


def reader(kind: Any) -> Callable[[Any], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def read(data: Any) -> Any:
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise PiseduceError(
                f"the web UI answered something this client cannot read ({where}: {first['msg']}); "
                "is the client older than the server? (pip install -U piseduce)"
            ) from None

    return read


def split_key(key: KeyLike) -> tuple[str, int]:
    """`agent/id` (or a Reservation) -> (agent, id); a clear error for anything else."""
    if isinstance(key, m.Reservation):
        return key.agent, key.id
    agent, sep, rid = str(key).rpartition("/")
    if not sep or not agent or not rid.isascii() or not rid.isdigit():
        raise PiseduceError(f"{str(key)[:80]!r} is not a reservation key (AGENT/ID, as `status` lists them)")
    return agent, int(rid)


def key_text(key: KeyLike) -> str:
    agent, rid = split_key(key)
    return f"{agent}/{rid}"


def res_path(key: KeyLike, tail: str = "") -> str:
    agent, rid = split_key(key)
    return f"/reservations/{quote(agent, safe='')}/{rid}" + (f"/{tail}" if tail else "")


def iso(value: dt.datetime | str) -> str:
    """A time for the API: ISO-8601 with its offset (a naive time is the local zone's), or 'now'."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.astimezone()
    return value.isoformat()


# ---------------------------------------------------------------- who, agents, nodes, calendar


def me() -> Call[m.Me]:
    return Call("GET", "/me", reader(m.Me))


def agents() -> Call[list[m.Agent]]:
    return Call("GET", "/agents", reader(list[m.Agent]))


def nodes(filters: Iterable[str] = (), agent: str | None = None) -> Call[list[m.Node]]:
    params = [("filter", f) for f in filters] + ([("agent", agent)] if agent else [])
    return Call("GET", "/nodes", reader(list[m.Node]), params)


def schedule(
    start: dt.datetime | str, end: dt.datetime | str, agent: str | None = None
) -> Call[list[m.ScheduleRow]]:
    params = [("start", iso(start)), ("end", iso(end))] + ([("agent", agent)] if agent else [])
    return Call("GET", "/schedule", reader(list[m.ScheduleRow]), params)


# ---------------------------------------------------------------- booking and reservations


def _which(
    nodes: Sequence[tuple[str, str] | Mapping[str, str] | str],
    count: int | None,
    filters: Iterable[str],
    verb: str,
) -> dict[str, Any]:
    """The nodes part of a booking or a next-slot search: given `nodes`, or `count` matching `filters`."""
    body: dict[str, Any] = {}
    if nodes:
        body["nodes"] = [node_ref(n) for n in nodes]
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise BadValues(f"count must be a whole number from 1 (got {count!r})")
        body["count"] = count
        body["filters"] = list(filters)
    elif filters and not nodes:
        raise PiseduceError("filters choose among nodes: give a count too (--count N)")
    if not nodes and count is None:
        raise PiseduceError(f"say what to {verb}: nodes (--nodes AGENT/NODE) or a count (--count N)")
    return body


def reserve(
    *,
    nodes: Sequence[tuple[str, str] | Mapping[str, str] | str] = (),
    count: int | None = None,
    filters: Iterable[str] = (),
    start: dt.datetime | str = "now",
    hours: float = 1.0,
    bin: str = "",
) -> Call[list[m.Reservation]]:
    """Book `nodes` ([(agent, node)], or "agent/node" strings) or `count` nodes matching `filters`;
    all or nothing across agents."""
    body = {"start": iso(start), "hours": hours_value(hours), "bin": bin,
            **_which(nodes, count, filters, "book")}
    return Call("POST", "/reservations", reader(list[m.Reservation]), body=body, idempotent=False)


def next_slot(
    *,
    nodes: Sequence[tuple[str, str] | Mapping[str, str] | str] = (),
    count: int | None = None,
    filters: Iterable[str] = (),
    after: dt.datetime | str = "now",
    hours: float = 1.0,
) -> Call[m.NextSlot]:
    """When `nodes`, or `count` nodes matching `filters`, could next be booked all at once for
    `hours`, at or after `after` (nothing is booked: `reserve(start=slot.start, ...)` books it)."""
    body = {"after": iso(after), "hours": hours_value(hours), **_which(nodes, count, filters, "look for")}
    return Call("POST", "/next-slot", reader(m.NextSlot), body=body)


def node_ref(n: tuple[str, str] | Mapping[str, str] | str) -> dict[str, str]:
    if isinstance(n, str):
        agent, sep, node = n.partition("/")
        if not sep or not agent or not node:
            raise PiseduceError(f"{n[:80]!r} names no node: write AGENT/NODE, as `nodes` lists them")
        return {"agent": agent, "node": node}
    if isinstance(n, Mapping):
        return {"agent": str(n["agent"]), "node": str(n["node"])}
    return {"agent": n[0], "node": n[1]}


def reservations(
    *, bin: str | None = None, status: str | None = None, all: bool = False
) -> Call[list[m.Reservation]]:
    params = [(k, v) for k, v in (("bin", bin), ("status", status)) if v]
    if all:
        params.append(("all", "true"))
    return Call("GET", "/reservations", reader(list[m.Reservation]), params)


def reservation(key: KeyLike) -> Call[m.ReservationDetail]:
    return Call("GET", res_path(key), reader(m.ReservationDetail))


def events(key: KeyLike, after: int = 0) -> Call[list[m.Event]]:
    return Call("GET", res_path(key, "events"), reader(list[m.Event]), [("after", str(after))])


def form(key: KeyLike) -> Call[list[m.FormField]]:
    return Call("GET", res_path(key, "form"), reader(list[m.FormField]))


def deploy(key: KeyLike, values: Mapping[str, Any]) -> Call[m.Reservation]:
    return Call(
        "POST",
        res_path(key, "deploy"),
        reader(m.Reservation),
        body={"values": dict(values)},
        idempotent=False,
    )


def action(key: KeyLike, name: str, body: Mapping[str, Any] | None = None) -> Call[m.Reservation]:
    if name not in ACTIONS:
        raise PiseduceError(f"{name!r} is no action (one of {', '.join(ACTIONS)})")
    return Call("POST", res_path(key, name), reader(m.Reservation), body=dict(body or {}), idempotent=False)


def extend(key: KeyLike, hours: float | None = None) -> Call[m.Reservation]:
    """Move the end later by `hours`; None: by the reservation's current length (the API's 0)."""
    return action(key, "extend", {} if hours is None else {"hours": hours_value(hours)})


# ---------------------------------------------------------------- environments, keys, credentials


def environments(agent: str | None = None) -> Call[list[m.Environment]]:
    return Call("GET", "/environments", reader(list[m.Environment]), [("agent", agent)] if agent else [])


def ssh_keys() -> Call[list[m.SshKey]]:
    return Call("GET", "/ssh-keys", reader(list[m.SshKey]))


def add_ssh_keys(keys: str) -> Call[Any]:
    """One or more OpenSSH public key lines, added to those installed on every deployed node."""
    return Call("POST", "/ssh-keys", lambda data: data, body={"keys": keys}, idempotent=False)


def delete_ssh_key(fingerprint: str) -> Call[Any]:
    return Call("DELETE", f"/ssh-keys/{quote(fingerprint, safe='')}", lambda data: data, idempotent=False)


def credentials(testbed: str) -> Call[m.CredentialsState]:
    return Call("GET", f"/credentials/{quote(testbed, safe='')}", reader(m.CredentialsState))


def set_credentials(testbed: str, user: str, password: str) -> Call[m.CredentialsState]:
    return Call(
        "PUT",
        f"/credentials/{quote(testbed, safe='')}",
        reader(m.CredentialsState),
        body={"user": user, "password": password},
        idempotent=False,
    )


def is_model(value: Any) -> bool:
    return isinstance(value, BaseModel)
