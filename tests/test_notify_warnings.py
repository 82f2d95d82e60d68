"""Slot-end warnings (the most urgent due one, once per end time, again after an extension) and
the account-approved notice (queued by the approval, mailed by the notifier)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.notify_fixtures import ALICE, agent_on, harness, notify_config
from helpers.smtp_server import SmtpServer
from helpers.webui_fixtures import add_user, book_on, webui_client
from piseduce.protocol import ReservationOut
from piseduce.webui.models import User
from piseduce.webui.notify import store
from piseduce.webui.notify.warnings import due_warnings

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _r(rid: int, owner: str, bin_name: str, start: int, end: int, node: str = "pi-1") -> ReservationOut:
    return ReservationOut(id=rid, node=node, owner=owner, bin=bin_name, status="deployed",
                          start=NOW + dt.timedelta(minutes=start), end=NOW + dt.timedelta(minutes=end))


def test_the_most_urgent_due_warning_per_user_and_bin() -> None:
    minutes = {ALICE: (30, 5), "bob@example.org": (30, 5)}
    rs = [
        _r(1, ALICE, "exp", -60, 20), _r(2, ALICE, "exp", -60, 20, "pi-2"),  # one bin: one warning
        _r(3, ALICE, "late", -60, 4),  # past the 30-min mark: only the 5-minute warning
        _r(4, ALICE, "short", -10, 15),  # a 25-minute slot: no 30-minute warning
        _r(5, "bob@example.org", "far", -60, 90),  # not due
        _r(6, "carol@example.org", "x", -60, 3),  # no such user here
    ]
    drafts = due_warnings(1, "a", rs, minutes, NOW)
    got = {(d.email, d.key.split(":")[3], d.payload["minutes"]) for d in drafts}
    assert got == {(ALICE, "exp", 30), (ALICE, "late", 5)}
    (exp,) = [d for d in due_warnings(1, "a", rs[:2], minutes, NOW)]
    assert exp.payload["nodes"] == ["pi-1", "pi-2"] and "in about 20 minute(s)" in exp.body
    # An extended slot (a new end) is a new warning.
    moved = [_r(1, ALICE, "exp", -60, 25)]
    assert due_warnings(1, "a", moved, minutes, NOW)[0].key != exp.key


async def test_warning_mailed_once_and_account_approval_mailed(tmp_path: Path) -> None:
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp)
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(config, "new@example.org", "pw-0123456789", state="pending")
    agent = agent_on(config, tmp_path / "agent-a")
    try:
        async with harness(config) as h:
            alice = h.user_id(ALICE)
            h.write(lambda s: store.save_prefs(s, alice, events=store.Prefs().events, email=True,
                                               webhook_url="", warn_minutes=(60, 5)))
            await asyncio.to_thread(book_on, agent, ALICE, ["pi-1"], hours=1, bin="soon")
            await h.notifier.run_once()
            await h.notifier.run_once()
            (mail,) = smtp.to(ALICE)
            assert "ends in" in mail["Subject"] and "soon" in mail.get_content()

            def approve() -> None:
                with webui_client(config) as b:
                    b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
                    uid = h.read(lambda s: s.query(User).filter_by(email="new@example.org").one().id)
                    r = b.post(f"/admin/users/{uid}/approve", page="/admin/users")
                    assert r.status_code == 303

            await asyncio.to_thread(approve)
            await h.notifier.run_once()
            (welcome,) = smtp.to("new@example.org")
            assert welcome["Subject"] == "[PiSeduce] your account was approved"
            await h.notifier.run_once()
            assert len(smtp.to("new@example.org")) == 1 and len(smtp.to(ALICE)) == 1
    finally:
        agent.stop()
        smtp.stop()
