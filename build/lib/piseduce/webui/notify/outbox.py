"""The outbox: what is to be sent, one row per channel, and its retries.

`queue` inserts a row unless one with its `dedupe_key` exists (what the event was, never when it
was read), in the caller's transaction: the cursor that read the event advances in the same one,
so a crash either keeps both or neither. A row is marked sent only after the mail server or the
webhook receiver accepted it; a failure waits `BACKOFF` (then doubles, up to a day in all) and is
given up after `MAX_ATTEMPTS`, with the last error kept for the admin page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.webui.models import (
    OUTBOX_DROPPED,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    OUTBOX_SENT,
    OutboxMessage,
    utcnow,
)
from piseduce.webui.notify.kinds import Notice

BACKOFF = dt.timedelta(seconds=30)
MAX_BACKOFF = dt.timedelta(hours=2)
MAX_ATTEMPTS = 16  # 30 s doubling to 2 h: about a day of trying


def delay_after(attempts: int, base: dt.timedelta = BACKOFF) -> dt.timedelta:
    """The wait after the `attempts`-th failure (1, 2, ...)."""
    return min(base * (2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def queue(
    s: Session,
    *,
    user_id: int,
    channel: str,
    kind: str,
    key: str,
    subject: str,
    body: str,
    payload: Mapping[str, Any],
) -> bool:
    """Queue one message; False when the same one (`key` on `channel`) was queued already."""
    dedupe = f"{channel}:{key}"[:255]
    if s.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == dedupe)) is not None:
        return False
    s.add(
        OutboxMessage(
            user_id=user_id,
            channel=channel,
            kind=kind,
            dedupe_key=dedupe,
            subject=subject[:255],
            body=body,
            payload=dict(payload),
            state=OUTBOX_PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
            last_error="",
        )
    )
    s.flush()
    return True


def due(s: Session, now: dt.datetime, limit: int = 50) -> list[OutboxMessage]:
    return list(
        s.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.state == OUTBOX_PENDING, OutboxMessage.next_attempt_at <= now)
            .order_by(OutboxMessage.id)
            .limit(limit)
        )
    )


def mark_sent(s: Session, message_id: int) -> None:
    row = s.get(OutboxMessage, message_id)
    if row is not None and row.state == OUTBOX_PENDING:
        row.state, row.sent_at, row.last_error = OUTBOX_SENT, utcnow(), ""
        row.attempts += 1


def mark_failed(s: Session, message_id: int, error: str, *, base: dt.timedelta = BACKOFF) -> None:
    row = s.get(OutboxMessage, message_id)
    if row is None or row.state != OUTBOX_PENDING:
        return
    row.attempts += 1
    row.last_error = error[:2000]
    if row.attempts >= MAX_ATTEMPTS:
        row.state = OUTBOX_FAILED
    else:
        row.next_attempt_at = utcnow() + delay_after(row.attempts, base)


def mark_dropped(s: Session, message_id: int, why: str) -> None:
    """Not sent and never to be: what it says is no longer true (kept, with why, for the admin page)."""
    row = s.get(OutboxMessage, message_id)
    if row is not None and row.state == OUTBOX_PENDING:
        row.state, row.last_error = OUTBOX_DROPPED, why[:2000]


def outdated(kind: str, payload: dict[str, object], now: dt.datetime) -> str:
    """Why a pending row must not be sent any more ('' when it may): a slot-end warning whose slot
    has ended (retried while the mail server was down, it would come after the slot-ended mail)."""
    if kind != Notice.SLOT_ENDING.value or not isinstance(payload.get("end"), str):
        return ""
    try:
        end = dt.datetime.fromisoformat(str(payload["end"]).replace("Z", "+00:00"))
    except ValueError:
        return ""
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.UTC)
    if end > now:
        return ""
    return f"dropped: the slot ended at {payload['end']} before the warning could be sent"


def postpone(s: Session, message_id: int, why: str, wait: dt.timedelta) -> None:
    """Not sent, not an attempt either (the channel is not set up yet): ask again later."""
    row = s.get(OutboxMessage, message_id)
    if row is not None and row.state == OUTBOX_PENDING:
        row.last_error, row.next_attempt_at = why[:2000], utcnow() + wait
