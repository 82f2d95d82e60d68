"""From drafts to outbox rows: for each draft, the user it names (by e-mail, an active account
of this web UI), whether they want that notice, and one row per channel they chose. Runs in the
caller's write transaction (the cursor that read the events advances in the same one)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.webui.models import STATE_ACTIVE, User
from piseduce.webui.notify import outbox
from piseduce.webui.notify.compose import Draft
from piseduce.webui.notify.kinds import EMAIL, WEBHOOK
from piseduce.webui.notify.store import load_prefs


def queue_drafts(s: Session, drafts: Iterable[Draft], *, mail: bool, any_state: bool = False) -> int:
    """Queue the drafts; how many rows were added. `mail`: an SMTP server is configured;
    `any_state`: the account may not be active yet (it is being approved)."""
    added = 0
    users: dict[str, User | None] = {}
    for d in drafts:
        if d.email not in users:
            users[d.email] = s.scalar(select(User).where(User.email == d.email))
        user = users[d.email]
        if user is None or (user.state != STATE_ACTIVE and not any_state):
            continue  # an agent's user unknown here, or an account no longer allowed in
        prefs = load_prefs(s, user.id)
        if not prefs.wants(d.notice):
            continue
        channels = []
        if prefs.email and mail:
            channels.append(EMAIL)
        if prefs.webhook_url and prefs.has_secret:
            channels.append(WEBHOOK)
        for channel in channels:
            added += outbox.queue(
                s,
                user_id=user.id,
                channel=channel,
                kind=d.notice.value,
                key=d.key,
                subject=d.subject,
                body=d.body,
                payload=d.payload,
            )
    return added
