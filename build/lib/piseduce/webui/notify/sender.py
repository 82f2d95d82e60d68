"""Delivering the outbox: due rows, oldest first, each by its channel; marked sent once the mail
server or the receiver accepted it, else retried later (outbox.py). Mail goes out through the
standard library's SMTP client in a thread; webhooks through httpx, signed with the user's key."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from functools import partial

import httpx
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from piseduce.config import WebuiConfig
from piseduce.webui.database import Database
from piseduce.webui.models import OutboxMessage, User, utcnow
from piseduce.webui.notify import mail, outbox, webhook
from piseduce.webui.notify.kinds import EMAIL, WEBHOOK
from piseduce.webui.notify.store import load_prefs, smtp_password, webhook_hosts

log = logging.getLogger(__name__)

NOT_SET_UP_WAIT = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Job:
    """One due row with what sending it needs, read in one transaction."""

    id: int
    channel: str
    kind: str
    key: str
    to: str
    subject: str
    body: str
    payload: dict[str, object]
    url: str
    secret: bytes | None


def _jobs(s: Session, fernet: Fernet, now: dt.datetime, limit: int) -> tuple[list[Job], str, list[str]]:
    jobs = []
    for row in outbox.due(s, now, limit):
        user = s.get(User, row.user_id)
        if user is None:
            continue
        # A retry follows the user's CURRENT webhook URL and key, not those of when it was queued
        # (issue 17, fix17b #5), deliberately: a user who changes the URL has usually withdrawn
        # the old one (a leaked, retired or taken-over receiver), and a pinned URL would keep
        # POSTing there for a day; the current URL is what webhook.post checks against the
        # admin's allowed hosts and the address guard at each attempt, on the addresses it
        # resolves to then. The key signing it is the current one too, so the receiver verifies
        # with what its user holds. Documented in the user guide (Notifications).
        prefs = load_prefs(s, row.user_id)
        jobs.append(
            Job(
                row.id,
                row.channel,
                row.kind,
                row.dedupe_key,
                user.email,
                row.subject,
                row.body,
                dict(row.payload or {}),
                prefs.webhook_url,
                prefs.secret(fernet),
            )
        )
    return jobs, smtp_password(s, fernet), webhook_hosts(s)


class Sender:
    def __init__(
        self, cfg: WebuiConfig, database: Database, fernet: Fernet, *, base: dt.timedelta = outbox.BACKOFF
    ) -> None:
        self.cfg = cfg
        self.database = database
        self.fernet = fernet
        self.base = base
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        await self.client.aclose()

    async def send_due(self, limit: int = 50) -> int:
        """Send what is due now; how many were accepted."""
        fernet = self.fernet
        jobs, password, hosts = await self.database.read(lambda s: _jobs(s, fernet, utcnow(), limit))
        smtp = mail.settings_of(self.cfg, password)
        sent = 0
        for job in jobs:
            why = outbox.outdated(job.kind, job.payload, utcnow())
            if why:
                await self.database.write(partial(outbox.mark_dropped, message_id=job.id, why=why))
                continue
            error = await self._one(job, smtp, hosts)
            if error is None:
                await self.database.write(partial(outbox.mark_sent, message_id=job.id))
                sent += 1
            elif error.startswith("postpone:"):
                why = error.removeprefix("postpone:")
                await self.database.write(
                    partial(outbox.postpone, message_id=job.id, why=why, wait=NOT_SET_UP_WAIT)
                )
            else:
                log.warning(
                    "notification %d (%s to %s) not delivered: %s", job.id, job.channel, job.to, error
                )
                await self.database.write(
                    partial(outbox.mark_failed, message_id=job.id, error=error, base=self.base)
                )
        return sent

    async def _one(self, job: Job, smtp: mail.SmtpSettings, hosts: list[str]) -> str | None:
        """None when accepted; else the error ("postpone:" when the channel is not set up)."""
        if job.channel == EMAIL:
            if not smtp.configured:
                return "postpone:no mail server is configured (smtp_host)"
            msg = mail.build(smtp, job.to, job.subject, job.body, job.key)
            try:
                await asyncio.to_thread(mail.send, smtp, msg)
            except mail.MailError as exc:
                return str(exc)
            return None
        if job.channel == WEBHOOK:
            if not job.url or job.secret is None:
                return "postpone:the user has no webhook URL or key now"
            try:
                await webhook.post(
                    self.client,
                    job.url,
                    job.secret,
                    job.payload,
                    event=job.kind,
                    delivery=job.key,
                    allowed=hosts,
                )
            except webhook.WebhookError as exc:
                return str(exc)
            return None
        return f"unknown channel {job.channel!r}"


def pending_count(s: Session) -> int:
    from sqlalchemy import func, select

    from piseduce.webui.models import OUTBOX_PENDING

    return int(
        s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.state == OUTBOX_PENDING))
        or 0
    )
