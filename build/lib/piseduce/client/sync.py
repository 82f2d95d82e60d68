"""`Client`: the user API, one blocking method per route (httpx). It works in scripts and, as
plain blocking calls, in a Jupyter cell too; `AsyncClient` is its twin for `await`."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import httpx

from piseduce.client import calls as c
from piseduce.client import forms, picking
from piseduce.client import models as m
from piseduce.client import transport as t
from piseduce.client.backoff import Backoff
from piseduce.client.errors import ApiError
from piseduce.client.waiting import DeployWatch, settled

T = TypeVar("T")
Progress = Callable[[list[m.Reservation]], None]


class Client:
    """`Client(url, token)`: `url` is the web UI's address, `token` a personal access token."""

    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base = t.api_base(url)
        self.http = httpx.Client(
            base_url=self.base, headers=t.headers(token), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: c.Call[T]) -> T:
        """Send one call; a 429 is waited out (its Retry-After) a few times, then reported."""
        for attempt in range(t.RETRIES_429 + 1):
            try:
                response = self.http.request(call.method, call.path, **t.request_args(call))
            except httpx.HTTPError as exc:
                raise t.unreachable(self.base, exc) from None
            pause = t.retry_after(response, attempt)
            if pause is None:
                break
            time.sleep(pause)
        return t.read(call, response)

    # ------------------------------------------------------------ one method per route

    def me(self) -> m.Me:
        return self.send(c.me())

    def agents(self) -> list[m.Agent]:
        return self.send(c.agents())

    def nodes(self, filters: Iterable[str] = (), agent: str | None = None) -> list[m.Node]:
        return self.send(c.nodes(filters, agent))

    def schedule(
        self, start: dt.datetime | str, end: dt.datetime | str, agent: str | None = None
    ) -> list[m.ScheduleRow]:
        return self.send(c.schedule(start, end, agent))

    def reserve(
        self,
        *,
        nodes: Sequence[tuple[str, str] | Mapping[str, str] | str] = (),
        count: int | None = None,
        filters: Iterable[str] = (),
        start: dt.datetime | str = "now",
        hours: float = 1.0,
        bin: str = "",
    ) -> list[m.Reservation]:
        return self.send(
            c.reserve(nodes=nodes, count=count, filters=filters, start=start, hours=hours, bin=bin)
        )

    def next_slot(
        self,
        *,
        nodes: Sequence[tuple[str, str] | Mapping[str, str] | str] = (),
        count: int | None = None,
        filters: Iterable[str] = (),
        after: dt.datetime | str = "now",
        hours: float = 1.0,
    ) -> m.NextSlot:
        """The earliest start at or after `after` where this could be booked all at once."""
        return self.send(c.next_slot(nodes=nodes, count=count, filters=filters, after=after, hours=hours))

    def reservations(
        self, *, bin: str | None = None, status: str | None = None, all: bool = False
    ) -> list[m.Reservation]:
        return self.send(c.reservations(bin=bin, status=status, all=all))

    def reservation(self, key: c.KeyLike) -> m.ReservationDetail:
        return self.send(c.reservation(key))

    def form(self, key: c.KeyLike) -> list[m.FormField]:
        return self.send(c.form(key))

    def deploy_values(
        self, key: c.KeyLike, values: Mapping[str, Any] | None = None, *, env: str | None = None
    ) -> dict[str, Any]:
        """The values `deploy` would send, checked against the reservation's form (BadValues)."""
        return forms.fill(self.form(key), values or {}, env, c.key_text(key))

    def deploy(
        self, key: c.KeyLike, values: Mapping[str, Any] | None = None, *, env: str | None = None
    ) -> m.Reservation:
        """Deploy with `values` (the form's fields; its defaults for the rest) and `env`, the
        environment or firmware name (`environments()`); checked against the form first."""
        return self.send(c.deploy(key, self.deploy_values(key, values, env=env)))

    def action(self, key: c.KeyLike, name: str, body: Mapping[str, Any] | None = None) -> m.Reservation:
        return self.send(c.action(key, name, body))

    def reboot(self, key: c.KeyLike) -> m.Reservation:
        return self.action(key, "reboot")

    def redeploy(self, key: c.KeyLike) -> m.Reservation:
        return self.action(key, "redeploy")

    def release(self, key: c.KeyLike) -> m.Reservation:
        """Give the node back now (the agent wipes it): the API's `destroy`."""
        return self.action(key, "destroy")

    def extend(self, key: c.KeyLike, hours: float | None = None) -> m.Reservation:
        """Move the end later by `hours` (None: by the reservation's current length)."""
        return self.send(c.extend(key, hours))

    def bootfiles(self, key: c.KeyLike) -> m.Reservation:
        return self.action(key, "bootfiles")

    def save_environment(self, key: c.KeyLike, name: str) -> m.Reservation:
        return self.action(key, "save-environment", {"name": name})

    def environments(self, agent: str | None = None) -> list[m.Environment]:
        return self.send(c.environments(agent))

    def ssh_keys(self) -> list[m.SshKey]:
        return self.send(c.ssh_keys())

    def add_ssh_keys(self, keys: str) -> Any:
        return self.send(c.add_ssh_keys(keys))

    def delete_ssh_key(self, fingerprint: str) -> Any:
        return self.send(c.delete_ssh_key(fingerprint))

    def credentials(self, testbed: str) -> m.CredentialsState:
        return self.send(c.credentials(testbed))

    def set_credentials(self, testbed: str, login: str, password: str) -> m.CredentialsState:
        return self.send(c.set_credentials(testbed, login, password))

    def free_nodes(
        self,
        filters: Iterable[str] = (),
        *,
        hours: float,
        start: dt.datetime | str = "now",
        agent: str | None = None,
        count: int | None = None,
    ) -> list[m.Node]:
        """Nodes matching `filters`, available and free from `start` for `hours` (at most
        `count`): what to name in one `reserve(nodes=...)` across kinds of nodes."""
        begin, end = picking.window(start, hours)
        found = picking.free(self.nodes(filters, agent), self.schedule(begin, end, agent), begin, end)
        return found if count is None else found[:count]

    # ------------------------------------------------------------ waiting and following

    def poll(self, watch: DeployWatch) -> bool:
        """One look at the followed reservations: my list, then each one it did not hold (its
        agent silent: no news this time, the wait goes on to its deadline)."""
        listed: list[m.Reservation] = self.send(replace(c.reservations(), quiet=True))
        changed = watch.observe(listed)
        for key in watch.missing():
            try:
                changed |= watch.observe([self.reservation(key)])
            except ApiError as exc:
                if not t.agent_silent(exc):
                    raise
                watch.silent(key, exc)
        return changed

    def wait_deployed(
        self, keys: Iterable[c.KeyLike], timeout: float = 1800.0, on_progress: Progress | None = None
    ) -> list[m.Reservation]:
        """Until every reservation is deployed (returned) or over: DeploymentFailed names the
        failed nodes, WaitTimeout the pending ones."""
        watch, backoff = DeployWatch(keys), Backoff()
        deadline = time.monotonic() + timeout
        while True:
            changed = self.poll(watch)
            if on_progress is not None:
                on_progress(watch.current())
            if watch.over():
                return watch.outcome()
            if time.monotonic() >= deadline:
                raise watch.timed_out(timeout)
            time.sleep(min(backoff.next(changed), max(0.0, deadline - time.monotonic())))

    def events(self, key: c.KeyLike, *, follow: bool = False, after: int = 0) -> Iterator[m.Event]:
        """A reservation's events, oldest first; `follow` keeps polling until it is over."""
        backoff = Backoff()
        while True:
            try:
                batch = self.send(c.events(key, after))
            except ApiError as exc:
                if not (follow and t.agent_silent(exc)):
                    raise
                batch = []
            after = max([after, *(e.n for e in batch)]) if batch else after
            yield from batch
            if not follow or (not batch and self._over(key)):
                return
            time.sleep(backoff.next(bool(batch)))

    def _over(self, key: c.KeyLike) -> bool:
        try:
            return settled(self.reservation(key))
        except ApiError as exc:
            if exc.status == 404:
                return True
            if t.agent_silent(exc):
                return False
            raise
