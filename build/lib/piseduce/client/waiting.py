"""Waiting for deployments, as a small state both clients feed with what they polled."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from piseduce.client import models as m
from piseduce.client.calls import KeyLike, split_key
from piseduce.client.errors import DeploymentFailed, WaitTimeout


def key_of(key: KeyLike) -> str:
    agent, rid = split_key(key)
    return f"{agent}/{rid}"


def settled(r: m.Reservation) -> bool:
    """Nothing more will happen on its own: gone, or deployed/failed with no process open. A
    redeploy or a reboot just asked for leaves the reservation `deployed` (or `failed`) until its
    process starts; the API's `progress` is not null from the moment that process is queued."""
    if r.status in m.GONE:
        return True
    return r.status in m.WAIT_OVER and r.progress is None


class DeployWatch:
    """The reservations a wait follows, their latest state, and whether the wait is over."""

    def __init__(self, keys: Iterable[KeyLike]) -> None:
        self.keys = list(dict.fromkeys(key_of(k) for k in keys))
        if not self.keys:
            raise ValueError("nothing to wait for: no reservation key given")
        self.latest: dict[str, m.Reservation] = {}
        # What the last poll of each reservation whose agent did not answer said (503's detail).
        self.unanswered: dict[str, str] = {}

    def missing(self) -> list[str]:
        return [k for k in self.keys if k not in self.latest]

    def observe(self, seen: Iterable[m.Reservation]) -> bool:
        """Take what a poll returned; True when any followed reservation changed."""
        changed = False
        for r in seen:
            k = f"{r.agent}/{r.id}"
            if k not in self.keys:
                continue
            old = self.latest.get(k)
            if old is None or (old.status, old.step, old.progress) != (r.status, r.step, r.progress):
                changed = True
            self.latest[k] = r
            self.unanswered.pop(k, None)
        return changed

    def silent(self, key: str, why: object) -> None:
        """The reservation's agent did not answer this poll: the wait goes on, the timeout names it."""
        self.unanswered[key_of(key)] = str(why)

    def current(self) -> list[m.Reservation]:
        return [self.latest[k] for k in self.keys if k in self.latest]

    def over(self) -> bool:
        return not self.missing() and all(settled(r) for r in self.latest.values())

    def outcome(self) -> list[m.Reservation]:
        """The deployed reservations; DeploymentFailed naming the others when any is not deployed."""
        done = [r for r in self.current() if r.status == m.DEPLOYED]
        failed = [r for r in self.current() if r.status != m.DEPLOYED]
        if failed:
            raise DeploymentFailed(failed, done)
        return done

    def timed_out(self, timeout: float) -> WaitTimeout:
        pending: Sequence[m.Reservation] = [r for r in self.current() if not settled(r)]
        silent = [f"{k}: its agent did not answer ({why})" for k, why in self.unanswered.items()]
        return WaitTimeout("the deployment", timeout, list(pending), silent)
