"""The login limiter: slow down password guessing without locking the rightful owner out.

The design is OWASP's, from "Blocking Brute Force Attacks" and "Slow Down Online Guessing Attacks
with Device Cookies" (https://owasp.org/www-community/Slow_Down_Online_Guessing_Attacks_with_Device_Cookies):

- failures are counted per **account and source** (the client's address, see client_addr.py), so
  one attacker's wrong passwords slow down that attacker only; the owner logging in from another
  address is not touched;
- per **source**, whatever the account, so one address cannot try one password on every account;
- per **account from unknown browsers**, a high limit for an attack spread over many addresses;
  a browser that logged in to the account before carries a **device cookie** (signed, for that
  account), and is counted under that cookie alone: it gets in even while the account is under
  attack from everywhere else;
- a wrong **current password** in Settings is counted per account like a login.

Each counter is a leaky bucket: after `free` failures the next try waits `base_delay`, and each
failure after that doubles the wait (at most `max_delay`); one failure leaks away every
`leak_seconds`. A try is counted when it starts (in the same transaction that checks the wait, so
tries sent in parallel cannot all pass) and forgiven when it succeeds. The counters are rows of
the database (`throttle`), shared by every web UI process, keyed by the SHA-256 of their text (no
e-mail address in clear). Unknown accounts are counted like real ones: the answers tell nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from piseduce.webui.models import Throttle

DEVICE_COOKIE = "piseduce_device"
DEVICE_MAX_AGE = 365 * 24 * 3600


@dataclass(frozen=True)
class Rule:
    free: int  # failures before the first wait
    leak_seconds: float  # one failure is forgotten every leak_seconds
    base_delay: float = 5.0  # the wait after the `free`-th failure; it doubles with each next one
    max_delay: float = 900.0
    # What the refusal says, after "Too many ...".
    words: str = "failed attempts"

    def delay(self, level: int) -> float:
        """The wait after the level-th failure still counted."""
        if level < self.free:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** min(level - self.free, 30))


def default_rules(account_source: int = 5, source: int = 30, account: int = 100) -> dict[str, Rule]:
    return {
        "account+source": Rule(account_source, 600, words="failed logins for this account from your address"),
        "source": Rule(source, 60, words="failed logins from your address"),
        "account": Rule(account, 36, words="failed logins for this account from browsers it was never "
                                             "used in (log in from a browser you used before, or wait)"),
        "device": Rule(account_source, 600, words="failed logins from this browser"),
        "signup": Rule(5, 720, base_delay=60, max_delay=3600, words="sign-ups from your address"),
        "current-password": Rule(account_source, 600, words="wrong current passwords"),
        # The users' API: a wrong token is a failed login of the caller's address.
        "api-token": Rule(source, 60, words="calls with a wrong API token from your address"),
        # Not a failure count: every next-slot question of a user (webui/next_slot_limit.py), a
        # burst of 20, then one every 3 s; a client asking in a loop waits up to a minute.
        "next-slot": Rule(20, 3, base_delay=2, max_delay=60, words="next-slot questions from your account"),
    }


@dataclass(frozen=True)
class Key:
    rule: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.rule}\0{self.text}".encode()).hexdigest()


@dataclass(frozen=True)
class Refusal:
    wait: float  # seconds
    words: str

    @property
    def message(self) -> str:
        return f"Too many {self.words}. Wait {_duration(self.wait)} and try again."

    @property
    def retry_after(self) -> str:
        """The wait as a Retry-After header says it: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.wait)))


def _duration(seconds: float) -> str:
    s = max(1, math.ceil(seconds))
    if s < 120:
        return f"{s} s"
    return f"{math.ceil(s / 60)} min"


class Limiter:
    """The counters' arithmetic; every method runs inside the caller's write transaction."""

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.rules = rules

    @staticmethod
    def _level(row: Throttle, rule: Rule, now: dt.datetime) -> int:
        """The failures still counted once the leak since the last one is taken off."""
        leaked = int((now - row.last_failure).total_seconds() // rule.leak_seconds)
        return max(0, row.failures - max(0, leaked))

    def waiting(self, s: Session, keys: Sequence[Key], now: dt.datetime) -> Refusal | None:
        """The refusal a try would get now (read only: nothing is counted); None when it may go."""
        rows = s.scalars(select(Throttle).where(Throttle.key.in_([k.digest for k in keys])))
        by_digest = {row.key: row for row in rows}
        worst: Refusal | None = None
        for key in keys:
            row = by_digest.get(key.digest)
            if row is not None and row.blocked_until is not None and row.blocked_until > now:
                wait = (row.blocked_until - now).total_seconds()
                if worst is None or wait > worst.wait:
                    worst = Refusal(wait, self.rules[key.rule].words)
        return worst

    def attempt(self, s: Session, keys: Sequence[Key], now: dt.datetime) -> Refusal | None:
        """Refuse the try when one of its keys must still wait; else count it as a failure under
        every key (forgiven by `succeeded`)."""
        rows = _locked_rows(s, keys, now)
        worst: Refusal | None = None
        for key, row in rows.items():
            if row.blocked_until is not None and row.blocked_until > now:
                wait = (row.blocked_until - now).total_seconds()
                if worst is None or wait > worst.wait:
                    worst = Refusal(wait, self.rules[key.rule].words)
        if worst is not None:
            return worst
        for key, row in rows.items():
            rule = self.rules[key.rule]
            level = self._level(row, rule, now) + 1
            row.failures, row.last_failure = level, now
            delay = rule.delay(level)
            row.blocked_until = now + dt.timedelta(seconds=delay) if delay else None
        return None

    def succeeded(self, s: Session, forget: Sequence[Key], forgive: Sequence[Key] = ()) -> None:
        """The try was right: the keys of `forget` start again from zero, those of `forgive` lose
        the failure counted when the try began."""
        digests = [k.digest for k in forget]
        if digests:
            s.execute(delete(Throttle).where(Throttle.key.in_(digests)))
        for key in forgive:
            row = s.get(Throttle, key.digest)
            if row is not None and row.failures > 0:
                row.failures -= 1
                if self.rules[key.rule].delay(row.failures) == 0:
                    row.blocked_until = None


def _locked_rows(s: Session, keys: Sequence[Key], now: dt.datetime) -> dict[Key, Throttle]:
    """The keys' rows, created when missing and locked until the transaction ends: on SQLite the
    write transaction (BEGIN IMMEDIATE) is exclusive already; on PostgreSQL a row lock, so that
    tries sent at once from several workers are counted one after the other."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    digests = sorted({k.digest for k in keys})  # one order for everyone: no deadlock
    s.execute(
        insert(Throttle)
        .values([{"key": d, "failures": 0, "last_failure": now, "blocked_until": None} for d in digests])
        .on_conflict_do_nothing(index_elements=["key"])
    )
    found = {
        row.key: row
        for row in s.scalars(
            select(Throttle).where(Throttle.key.in_(digests)).order_by(Throttle.key).with_for_update()
        )
    }
    return {k: found[k.digest] for k in keys}


def purge(s: Session, now: dt.datetime, older_than: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Forget counters idle for a day (every rule leaks them to zero well before)."""
    query = delete(Throttle).where(
        Throttle.last_failure < now - older_than,
        (Throttle.blocked_until.is_(None)) | (Throttle.blocked_until < now),
    )
    return int(s.execute(query).rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- device cookies


def device_cookie(secret: str, email: str) -> str:
    """A new device cookie for a browser that just logged in to `email`."""
    nonce = secrets.token_urlsafe(16)
    return f"{nonce}.{_device_mac(secret, email, nonce)}"


def device_nonce(secret: str, email: str, cookie: str | None) -> str | None:
    """The nonce of a genuine device cookie of `email`; None for no cookie, another account's or a
    forged one."""
    if not cookie or cookie.count(".") != 1 or len(cookie) > 200:
        return None
    nonce, mac = cookie.split(".")
    if not nonce or not hmac.compare_digest(mac, _device_mac(secret, email, nonce)):
        return None
    return nonce


def _device_mac(secret: str, email: str, nonce: str) -> str:
    return hmac.new(secret.encode(), f"device\0{email}\0{nonce}".encode(), hashlib.sha256).hexdigest()[:43]
