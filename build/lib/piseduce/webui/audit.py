"""The operators' audit trail: who did what, when, from where (table `audit_events`).

One way in: `record(session, who, action, target, detail)`, called by the routes inside the write
transaction of the change it records, so that a change committed is a change audited (a crash
loses both or neither). What is done elsewhere (an agent destroying a reservation, a switch
powering a port) has no transaction here: `record_now` writes its row in a transaction of its
own once the agent accepted. A refused attempt is recorded only where the refusal is the event
(a failed login).

The trail is append-only: nothing here updates a row, and the only delete is `purge`, the
housekeeping chore's retention by age (`audit_retention_days` in config_webui.json; 0 keeps
every row). The detail is small JSON that never carries a secret: `clean` drops every key that
names one and every value that looks like one, whatever a caller passes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from piseduce.dbtypes import to_utc, utcnow
from piseduce.webui.database import Database
from piseduce.webui.models import AuditEvent, User

T = TypeVar("T")

# The catalogue of actions (the admin page's filter lists it; `record` refuses any other name,
# so a new call site cannot invent a name nobody can filter on).
ACTIONS: dict[str, str] = {
    "login": "logged in",
    "login.failed": "failed login (wrong email or password, or not approved)",
    "signup": "signed up (account pending approval)",
    "signup.existing": "sign-up with the email of an existing account (left unchanged)",
    "user.approve": "approved an account",
    "user.revoke": "revoked an account",
    "user.promote": "made an account admin",
    "user.demote": "made an admin a user",
    "user.remove": "removed an account",
    "password.change": "changed their password",
    "token.create": "created a personal access token",
    "token.revoke": "revoked a personal access token",
    "calendar.create": "made (or regenerated) their calendar feed URL",
    "calendar.revoke": "revoked their calendar feed URL",
    "notify.channels": "changed their notification channels (mail, webhook URL)",
    "notify.webhook_key": "made a new webhook signing key",
    "notify.hosts": "changed the webhooks' allowed hosts",
    "notify.smtp_password": "set, replaced or cleared the SMTP password",
    "ssh_key.add": "added SSH public keys",
    "ssh_key.remove": "removed an SSH public key",
    "credentials.set": "saved testbed credentials",
    "credentials.delete": "deleted testbed credentials",
    "agent.add": "added an agent",
    "agent.remove": "removed an agent",
    "reservation.destroy": "destroyed another user's reservation",
    "reservation.release": "released another user's reservation",
    "reservation.extend": "extended another user's reservation",
    "reservation.reboot": "rebooted another user's node",
    "reservation.redeploy": "redeployed another user's node",
    "reservation.bootfiles": "updated the boot files of another user's node",
    "reservation.deploy": "deployed another user's reservation",
    "port.power": "powered a switch port on or off",
    "node.detect": "started a node detection run",
    "node.add": "added a node",
    "node.status": "changed a node's status",
    "node.delete": "deleted a node",
    "switch.add": "added a PoE switch",
    "switch.edit": "changed a PoE switch",
    "switch.delete": "deleted a PoE switch",
    "environment.delete": "deleted an environment",
    "environment.save": "added or changed an environment",
    "environment.default": "set or unset an agent's default environment",
    "environment.scan": "scanned an agent's env_path for environments",
}

TEXT_MAX = 200  # characters of one detail string
DETAIL_KEYS = 20  # keys of one detail mapping
DETAIL_DEPTH = 3
REDACTED = "[redacted]"
# Keys whose values are secrets by their name: never stored, whatever the value.
SECRET_KEY_RE = re.compile(r"pass|secret|token|private|credential|cookie|authori|^key$|_key$|csrf", re.I)
# Values that look like secrets whatever their key: a personal access token, a calendar feed's
# secret, a Fernet token, a PEM or OpenSSH private key, a bearer header.
SECRET_VALUE_RE = re.compile(
    r"pst_[A-Za-z0-9_-]{8,}|pcf_[A-Za-z0-9_-]{8,}|gAAAAA[A-Za-z0-9_=-]{20,}|-----BEGIN|Bearer\s", re.I
)


@dataclass(frozen=True)
class Who:
    """The actor of an event and where the request came from (`id` None: nobody logged in)."""

    id: int | None
    email: str
    source: str


def source_of(conn: HTTPConnection) -> str:
    """The client's address, trusted proxies resolved (webui/client_addr.py)."""
    return str(conn.app.state.client_addr.address(conn))[:64]


def who(conn: HTTPConnection, user: User | None = None, email: str = "") -> Who:
    """The actor `user` (or an anonymous visitor who typed `email`) and the request's source."""
    if user is not None:
        return Who(user.id, user.email, source_of(conn))
    return Who(None, email[:254], source_of(conn))


def clean(value: Any, depth: int = 0) -> Any:
    """`value` as JSON with no secret in it: secret-named keys and secret-looking strings become
    REDACTED, strings are cut at TEXT_MAX, mappings and lists at DETAIL_KEYS items."""
    if isinstance(value, Mapping):
        if depth >= DETAIL_DEPTH:
            return REDACTED
        out: dict[str, Any] = {}
        for k, v in list(value.items())[:DETAIL_KEYS]:
            key = str(k)[:64]
            out[key] = REDACTED if SECRET_KEY_RE.search(key) else clean(v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        if depth >= DETAIL_DEPTH:
            return REDACTED
        return [clean(v, depth + 1) for v in list(value)[:DETAIL_KEYS]]
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    if SECRET_VALUE_RE.search(text):
        return REDACTED
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "…"


def record(
    s: Session,
    who: Who,
    action: str,
    target: tuple[str, Any] = ("", ""),
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Add one event to `s`'s transaction (committed with the change it records)."""
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r} is not in audit.ACTIONS")
    kind, ident = target
    s.add(
        AuditEvent(
            at=utcnow(),
            actor_id=who.id,
            actor_email=who.email[:254],
            source=who.source[:64],
            action=action,
            target_kind=str(kind)[:32],
            target_id=str(ident)[:128],
            detail=clean(dict(detail or {})),
        )
    )


async def record_now(
    db: Database,
    who: Who,
    action: str,
    target: tuple[str, Any] = ("", ""),
    detail: Mapping[str, Any] | None = None,
) -> None:
    """`record` in a transaction of its own: for what happened elsewhere (on an agent)."""
    await db.write(lambda s: record(s, who, action, target, detail))


def then(
    fn: Callable[[Session], T],
    who: Who,
    action: str,
    entry: Callable[[T], tuple[tuple[str, Any], Mapping[str, Any]] | None],
) -> Callable[[Session], T]:
    """`fn`, then (in its transaction) the event `entry` makes of its result (None: nothing
    happened, nothing recorded). Lets a route audit a service function in one line."""

    def run(s: Session) -> T:
        out = fn(s)
        made = entry(out)
        if made is not None:
            record(s, who, action, *made)
        return out

    return run


class _Outcome(Protocol):
    kind: str


def user_action(fn: Callable[[Session], T], who: Who, user_id: int, action: str) -> Callable[[Session], T]:
    """An admin's action on an account (`fn`, returning an outcome with `kind`), recorded when it
    succeeded, with the account's email read before `fn` (a removed account has none after)."""

    def run(s: Session) -> T:
        row = s.get(User, user_id)
        email = row.email if row is not None else ""
        out = fn(s)
        outcome: _Outcome = out  # type: ignore[assignment]
        if outcome.kind == "ok" and f"user.{action}" in ACTIONS:
            record(s, who, f"user.{action}", ("user", user_id), {"email": email})
        return out

    return run


async def note(
    conn: HTTPConnection,
    user: User,
    action: str,
    target: tuple[str, Any] = ("", ""),
    detail: Mapping[str, Any] | None = None,
) -> None:
    """`record_now` of what `user` did in this request (the route's one line)."""
    await record_now(conn.app.state.database, who(conn, user), action, target, detail)


async def on_reservations(
    conn: HTTPConnection, user: User, action: str, done: list[tuple[str, int, str, str]]
) -> None:
    """An admin's accepted `action` on reservations (agent, id, owner, node): each one another
    user holds is recorded (one's own reservations are the user's business, not the trail's)."""
    db: Database = conn.app.state.database
    who_ = who(conn, user)
    is_admin = user.is_admin
    name = f"reservation.{action}"
    # An owner the listing did not show ("") counts as another user's: better one row too many.
    others = [d for d in done if d[2] != who_.email]
    if not is_admin or not others or name not in ACTIONS:
        return

    def write(s: Session) -> None:
        for agent, rid, owner, node in others:
            record(s, who_, name, ("reservation", f"{agent}/{rid}"), {"owner": owner, "node": node})

    await db.write(write)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Filters:
    """What the page, the export and the API filter on (every field optional)."""

    actor: str = ""  # a user id (digits) or part of an email
    action: str = ""  # an action, or a group such as "user.*"
    target_kind: str = ""
    target_id: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def query(self) -> dict[str, str]:
        """The filters as URL query parameters (the page's paging and export links)."""
        out = {
            "actor": self.actor, "action": self.action, "target_kind": self.target_kind,
            "target_id": self.target_id,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
        }
        return {k: v for k, v in out.items() if v}


ACTION_FILTER_RE = re.compile(r"^[a-z_]{1,32}(\.[a-z_]{1,32})?(\.\*)?$")


def check_filters(f: Filters) -> str | None:
    """Why these filters cannot be used, in words; None when they can."""
    if f.action and not ACTION_FILTER_RE.match(f.action):
        return "action: a name from the list, such as login.failed, or a group such as user.*"
    if f.since and f.until and f.since > f.until:
        return "The time range ends before it starts: swap 'from' and 'to'."
    if len(f.actor) > 254 or len(f.target_kind) > 32 or len(f.target_id) > 128:
        return "A filter is too long."
    return None


def _where(q: Select[tuple[AuditEvent]], f: Filters) -> Select[tuple[AuditEvent]]:
    actor = f.actor.strip()
    if actor.isdigit() and len(actor) <= 12:
        q = q.where(AuditEvent.actor_id == int(actor))
    elif actor:
        pattern = actor.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(AuditEvent.actor_email.like(f"%{pattern}%", escape="\\"))
    if f.action.endswith(".*"):
        q = q.where(AuditEvent.action.like(f.action[:-1].replace("_", "\\_") + "%", escape="\\"))
    elif f.action:
        q = q.where(AuditEvent.action == f.action)
    if f.target_kind:
        q = q.where(AuditEvent.target_kind == f.target_kind)
    if f.target_id:
        q = q.where(AuditEvent.target_id == f.target_id)
    if f.since:
        q = q.where(AuditEvent.at >= to_utc(f.since))
    if f.until:
        q = q.where(AuditEvent.at <= to_utc(f.until))
    return q


def newest(s: Session, f: Filters, *, before: int | None = None, limit: int = 50) -> list[AuditEvent]:
    """A page of events, newest first; `before`: only those older than that event id."""
    q = _where(select(AuditEvent), f)
    if before is not None:
        q = q.where(AuditEvent.id < before)
    return list(s.scalars(q.order_by(AuditEvent.id.desc()).limit(limit)))


def oldest(s: Session, f: Filters, *, after: int = 0, limit: int = 500) -> list[AuditEvent]:
    """A batch of the export, oldest first, after the event id `after`."""
    q = _where(select(AuditEvent), f).where(AuditEvent.id > after)
    return list(s.scalars(q.order_by(AuditEvent.id).limit(limit)))


def as_json(e: AuditEvent) -> dict[str, Any]:
    """One event as the export and the API write it (times in UTC, ISO 8601)."""
    return {
        "id": e.id,
        "at": to_utc(e.at).isoformat().replace("+00:00", "Z"),
        "actor": {"id": e.actor_id, "email": e.actor_email},
        "source": e.source,
        "action": e.action,
        "target": {"kind": e.target_kind, "id": e.target_id},
        "detail": e.detail or {},
    }


def purge(s: Session, now: dt.datetime, retention_days: int) -> int:
    """Delete the events older than the retention (0: keep all); how many went."""
    if retention_days <= 0:
        return 0
    cut = now - dt.timedelta(days=retention_days)
    result = s.execute(delete(AuditEvent).where(AuditEvent.at < cut))
    return int(getattr(result, "rowcount", 0) or 0)


EXPORT_BATCH = 500


def _batch(f: Filters, after: int, s: Session) -> list[dict[str, Any]]:
    return [as_json(e) for e in oldest(s, f, after=after, limit=EXPORT_BATCH)]


async def lines(db: Database, f: Filters) -> AsyncIterator[bytes]:
    """The export: one JSON object per line, oldest first, read in batches (each its own short
    read transaction in the database's threads), so that a year of events is streamed, never
    held in memory or on the event loop."""
    after = 0
    while True:
        batch = await db.read(partial(_batch, f, after))
        for row in batch:
            yield (json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        if len(batch) < EXPORT_BATCH:
            return
        after = int(batch[-1]["id"])


# ---------------------------------------------------------------- entries of `then`

Entry = tuple[tuple[str, Any], Mapping[str, Any]] | None


def keys_added(uid: int) -> Callable[[int | str], Entry]:
    """ssh_key.add: how many keys were added (nothing recorded when none was, or on a refusal)."""
    return lambda added: (("user", uid), {"added": added}) if isinstance(added, int) and added > 0 else None


def key_removed(uid: int, fingerprint: str) -> Callable[[bool], Entry]:
    return lambda done: (("user", uid), {"fingerprint": fingerprint}) if done else None


def credentials_of(uid: int, kind: str, login: str) -> Callable[[bool], Entry]:
    """credentials.set / .delete: the testbed and its login, never the password."""
    detail = {"kind": kind, "login": login} if login else {"kind": kind}
    return lambda done: (("user", uid), detail) if done else None


# ---------------------------------------------------------------- filters from a query string

FILTER_FIELDS = ("actor", "action", "target_kind", "target_id", "since", "until")


def parse_time(text: str, zone: dt.tzinfo, label: str) -> dt.datetime:
    """A filter's time: ISO 8601 with an offset, or without one in `zone` (the page: the viewer's
    zone; the API: UTC); a bare date is its midnight. ValueError in words."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{label}: a date and time such as 2026-12-03T14:00 (or 2026-12-03)") from None
    try:
        return to_utc(t if t.tzinfo is not None else t.replace(tzinfo=zone))
    except ValueError:
        raise ValueError(f"{label}: {text[:40]!r} is out of range") from None


def filters_from(params: Mapping[str, str], zone: dt.tzinfo) -> Filters | str:
    """The filters a query string asks for, or why they cannot be used (in words)."""
    raw = {k: str(params.get(k) or "")[:300].strip() for k in FILTER_FIELDS}
    try:
        since = parse_time(raw["since"], zone, "From") if raw["since"] else None
        until = parse_time(raw["until"], zone, "To") if raw["until"] else None
    except ValueError as exc:
        return str(exc)
    f = Filters(raw["actor"], raw["action"], raw["target_kind"], raw["target_id"], since, until)
    return check_filters(f) or f
