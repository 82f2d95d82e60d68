"""What the notifications keep in the web UI's database besides the outbox: each user's
preferences (defaults when they never chose), the webhooks' HMAC keys and the SMTP password
(Fernet tokens made with the key file, never in clear), and the webhooks' allowed hosts."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.orm import Session

from piseduce import crypto
from piseduce.webui.models import NotifyPrefs, NotifySetting, utcnow
from piseduce.webui.notify.kinds import DEFAULT_EVENTS, DEFAULT_WARN_MINUTES, Notice

SMTP_PASSWORD = "smtp_password"  # noqa: S105 - a setting's name
WEBHOOK_HOSTS = "webhook_hosts"


@dataclass
class Prefs:
    events: frozenset[Notice] = frozenset(DEFAULT_EVENTS)
    email: bool = True
    webhook_url: str = ""
    has_secret: bool = False
    warn_minutes: tuple[int, ...] = DEFAULT_WARN_MINUTES
    _secret_token: str | None = field(default=None, repr=False)

    def wants(self, notice: Notice) -> bool:
        return notice in self.events

    def secret(self, fernet: Fernet) -> bytes | None:
        if not self._secret_token:
            return None
        try:
            return crypto.decrypt_str(fernet, self._secret_token).encode()
        except (InvalidToken, ValueError):
            return None


def prefs_of(row: NotifyPrefs | None) -> Prefs:
    if row is None:
        return Prefs()
    events = frozenset(Notice(e) for e in row.events or () if e in Notice._value2member_map_)
    minutes = tuple(sorted({int(m) for m in row.warn_minutes or () if isinstance(m, int)}, reverse=True))
    return Prefs(
        events, bool(row.email), row.webhook_url or "", bool(row.webhook_secret), minutes, row.webhook_secret
    )


def load_prefs(s: Session, user_id: int) -> Prefs:
    return prefs_of(s.get(NotifyPrefs, user_id))


def _row(s: Session, user_id: int) -> NotifyPrefs:
    row = s.get(NotifyPrefs, user_id)
    if row is None:
        row = NotifyPrefs(
            user_id=user_id,
            events=[e.value for e in DEFAULT_EVENTS],
            email=True,
            webhook_url="",
            warn_minutes=list(DEFAULT_WARN_MINUTES),
        )
        s.add(row)
    return row


def save_prefs(
    s: Session,
    user_id: int,
    *,
    events: frozenset[Notice],
    email: bool,
    webhook_url: str,
    warn_minutes: tuple[int, ...],
) -> None:
    row = _row(s, user_id)
    row.events = sorted(e.value for e in events)
    row.email = email
    if webhook_url != row.webhook_url:
        row.webhook_url = webhook_url
    row.warn_minutes = sorted(set(warn_minutes), reverse=True)
    row.updated_at = utcnow()


def new_webhook_secret(s: Session, fernet: Fernet, user_id: int) -> str:
    """A new HMAC key for the user's webhook, stored sealed; the caller shows it once."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = _row(s, user_id)
    row.webhook_secret = crypto.encrypt_str(fernet, secret)
    row.updated_at = utcnow()
    return secret


def _setting(s: Session, key: str) -> NotifySetting:
    row = s.get(NotifySetting, key)
    if row is None:
        row = NotifySetting(key=key, value={})
        s.add(row)
    return row


def set_smtp_password(s: Session, fernet: Fernet, password: str) -> None:
    row = _setting(s, SMTP_PASSWORD)
    row.value = {"token": crypto.encrypt_str(fernet, password)} if password else {}
    row.updated_at = utcnow()


def smtp_password(s: Session, fernet: Fernet) -> str:
    row = s.get(NotifySetting, SMTP_PASSWORD)
    token = (row.value or {}).get("token") if row is not None else None
    if not token:
        return ""
    try:
        return crypto.decrypt_str(fernet, str(token))
    except (InvalidToken, ValueError):
        return ""


def webhook_hosts(s: Session) -> list[str]:
    row = s.get(NotifySetting, WEBHOOK_HOSTS)
    hosts = (row.value or {}).get("hosts", []) if row is not None else []
    return [str(h) for h in hosts]


def set_webhook_hosts(s: Session, hosts: list[str]) -> None:
    row = _setting(s, WEBHOOK_HOSTS)
    row.value = {"hosts": hosts}
    row.updated_at = utcnow()
