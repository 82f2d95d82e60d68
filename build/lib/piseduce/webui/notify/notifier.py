"""The notifications' background chore (run by the chores' leader, webui/chores.py): every
`notify_poll_seconds`, read each connected agent's event feed (feed.py), queue the due slot-end
warnings (warnings.py), then deliver what the outbox holds (sender.py). One agent failing (down,
an old version without the feed) never stops the others; its cursor just waits."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from piseduce.config import WebuiConfig
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agents import AgentRef
from piseduce.webui.database import Database
from piseduce.webui.models import AGENT_CONNECTED, utcnow
from piseduce.webui.notify.feed import NOTIFIER, FeedReader
from piseduce.webui.notify.queueing import queue_drafts
from piseduce.webui.notify.sender import Sender
from piseduce.webui.notify.warnings import due_warnings, warn_minutes

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, cfg: WebuiConfig, database: Database, hub: AgentClient, fernet: Fernet) -> None:
        self.cfg = cfg
        self.database = database
        self.hub = hub
        self.mail = bool(cfg.smtp_host)
        self.reader = FeedReader(hub, mail=self.mail)
        self.sender = Sender(cfg, database, fernet, base=dt.timedelta(seconds=cfg.notify_retry_seconds))
        self._errors: dict[int, str] = {}

    async def _agent(self, ref: AgentRef) -> None:
        result = await self.reader.one_pass(ref, self.database)
        if result.error and self._errors.get(ref.id) != result.error:
            log.warning("notifications: cannot read the events of %s", result.error)
        self._errors[ref.id] = result.error
        got = await self.hub.reservations(ref, NOTIFIER, status="active", everyone=True)
        if got.value is None:
            return
        reservations = got.value
        now = utcnow()
        mail = self.mail

        def store(s: Session) -> int:
            minutes = warn_minutes(s, (r.owner for r in reservations))
            return queue_drafts(s, due_warnings(ref.id, ref.name, reservations, minutes, now), mail=mail)

        await self.database.write(store)

    async def run_once(self) -> None:
        refs = [r for r in await self.hub.refs() if r.status == AGENT_CONNECTED]
        results = await asyncio.gather(*(self._agent(r) for r in refs), return_exceptions=True)
        for ref, res in zip(refs, results, strict=True):
            if isinstance(res, Exception):
                log.error("notifications: agent %s: %s", ref.name, res, exc_info=res)
        await self.sender.send_due()

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.run_once()
                except Exception:
                    log.exception("notifications pass failed")
                await asyncio.sleep(self.cfg.notify_poll_seconds)
        finally:
            await self.sender.close()
