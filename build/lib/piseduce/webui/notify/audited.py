"""What the audit trail says of a change to the notification settings (webui/audit.py records
it, in the transaction of the change): the webhooks' allowed hosts before and after (the SSRF
gate), the SMTP password as "set" / "replaced" / "cleared", a user's channels (mail on or off,
the webhook's origin) and a new signing key as a fact. Never a password, a signing key, nor a
webhook URL's path or query: receivers such as Slack's or Discord's carry their own secret there,
and the origin is what the SSRF question is about. None: nothing changed, nothing to record."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from piseduce.webui.notify.store import Prefs

Detail = dict[str, Any]
NEW_KEY = "new key made"


def hosts_change(before: list[str], after: list[str]) -> Detail | None:
    """notify.hosts: the list before and after, and what was added and removed (what a long
    list's reader wants; audit.clean keeps the first 20 of each)."""
    if sorted(before) == sorted(after):
        return None
    return {
        "before": sorted(before),
        "after": sorted(after),
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
    }


def smtp_password_change(had: bool, password: str) -> Detail | None:
    """notify.smtp_password: what happened to it, in a word (clearing none: nothing)."""
    if password:
        return {"change": "replaced" if had else "set"}
    return {"change": "cleared"} if had else None


def origin(url: str) -> str:
    """`scheme://host[:port]` of a webhook URL ('' for none); the path and query left out."""
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()


def channels_change(before: Prefs, *, email: bool, webhook_url: str, new_key: bool) -> Detail | None:
    """notify.channels: mail and webhook before and after, when either changed (the choice of
    events and warnings is not a security matter and is not recorded)."""
    if before.email == email and before.webhook_url == webhook_url:
        return None
    out: Detail = {
        "email": {"before": before.email, "after": email},
        "webhook": {
            "before": origin(before.webhook_url),
            "after": origin(webhook_url),
            "url_changed": before.webhook_url != webhook_url,
        },
    }
    if new_key:
        out["signing"] = NEW_KEY
    return out


def new_key() -> Detail:
    """notify.webhook_key: that a key was made (the key itself is shown once to its user)."""
    return {"signing": NEW_KEY}
