"""Issue 17, eve's report, the other leads: an account signed up, approved, promoted and demoted
that never opened Settings > Notifications (the defaults: every event, by mail) is told when an
administrator destroys her reservation through /api/v1 — the role changes, the e-mail → user
lookup and the defaults lose nothing. The real web UI in-process (sign-up and the admin's actions
as forms with their CSRF token), a real agent, the notifier's passes and a real SMTP server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from helpers.api_helpers import API, make_token
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.notify_fixtures import agent_on, harness, notify_config
from helpers.smtp_server import SmtpServer
from helpers.webui_fixtures import add_user, book_on, webui_client
from piseduce.webui.models import OutboxMessage, User
from piseduce.webui.notify.kinds import Notice

EVE, EVE_PASSWORD = "eve@example.org", "eve-password-0123"  # noqa: S105


async def _notifier_pass(config: Path) -> list[tuple[str, str, str]]:
    """One pass of the notifier; the outbox as (user, kind, state)."""
    async with harness(config) as h:
        await h.notifier.run_once()

        def rows(s: object) -> list[tuple[str, str, str]]:
            q = select(User.email, OutboxMessage.kind, OutboxMessage.state).join(
                User, User.id == OutboxMessage.user_id).order_by(OutboxMessage.id)
            return [(str(e), str(k), str(st)) for e, k, st in s.execute(q)]  # type: ignore[attr-defined]

        return list(h.read(rows))


def test_a_promoted_then_demoted_account_with_default_settings_is_told(tmp_path: Path) -> None:
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp)
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    agent = agent_on(config, tmp_path / "agent-a")
    try:
        asyncio.run(_notifier_pass(config))  # the cursor starts at the agent's present
        with webui_client(config) as visitor, webui_client(config) as admin:
            r = visitor.post("/signup", {"email": EVE, "password": EVE_PASSWORD, "confirm": EVE_PASSWORD},
                             page="/signup")
            assert r.status_code in (200, 303), r.text
            assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
            for action in ("approve", "promote", "demote"):
                page = admin.get("/admin/users").text
                uid = page.split(f'data-email="{EVE}"', 1)[1].split("/admin/users/", 1)[1].split("/", 1)[0]
                r = admin.post(f"/admin/users/{uid}/{action}", page="/admin/users")
                assert r.status_code == 303, (action, r.text)
            page = admin.get("/admin/users").text
            assert f'data-email="{EVE}"' in page.split("Admins (", 1)[0], "eve is a member again"

            rid = book_on(agent, EVE, ["pi-1"])[0]
            token = make_token(config, ADMIN_EMAIL)
            r = admin.c.post(f"{API}/reservations/site-a/{rid}/destroy",
                             headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 202, r.text

        rows = asyncio.run(_notifier_pass(config))
        assert (EVE, Notice.ADMIN_ACTION.value, "sent") in rows, rows
        (mail,) = [m for m in smtp.to(EVE) if "an administrator acted on pi-1" in str(m["Subject"])]
        assert f"administrator ({ADMIN_EMAIL})" in mail.get_content()
    finally:
        agent.stop()
        smtp.stop()
