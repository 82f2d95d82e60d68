"""Notices of the web UI itself (not of an agent's log): an account approved. Queued in the
approving transaction, so the notice exists exactly when the approval does."""

from __future__ import annotations

from sqlalchemy.orm import Session

from piseduce.webui.models import User
from piseduce.webui.notify import compose
from piseduce.webui.notify.queueing import queue_drafts


def approved(s: Session, user: User) -> None:
    # Mail is queued whether or not a server is configured yet: the sender waits for one.
    queue_drafts(s, [compose.account_approved(user.id, user.email, "")], mail=True, any_state=True)
