"""The audit trail of the notification settings (issue 17, fix17b): an admin's changes to the
webhooks' allowed hosts (the SSRF gate) and to the SMTP password, and a user's own webhook URL,
mail channel and signing key, each recorded with who, from where and what changed — the hosts
before and after, "set"/"replaced"/"cleared" for the password, the webhook's origin only (a
receiver's URL path often is its own secret) — and never the password, the signing key or the
URL's path in the table or the export. Saving what is already there records nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import add_user, webui_client, write_webui_config
from test_webui_audit import export, table_text

pytestmark = pytest.mark.usefixtures("fast_argon2")

DAVE = "dave@example.org"
DAVE_PW = "dave-first-Secret-4k2m"
ADMIN_FROM, DAVE_FROM = ("198.51.100.9", 40011), ("192.0.2.20", 40012)
SMTP_PW, SMTP_PW2 = "smtp-Mail-Secret-81az", "smtp-Mail-Secret-92by"
HOOK_PATH = "T0001/B0002/receiverPathSecret7x"
HOOK_URL = f"http://127.0.0.1:9/hooks/{HOOK_PATH}?sig=querySecret55"
KEY_RE = re.compile(r"whsec_[A-Za-z0-9_-]{20,}")
SETTINGS = "/settings?tab=notifications"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui", smtp_host="127.0.0.1", smtp_port=2525, smtp_user="mailer")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, DAVE, DAVE_PW)
    return cfg


def hook(before: str, after: str, changed: bool) -> dict[str, object]:
    return {"before": before, "after": after, "url_changed": changed}


def _channels(url: str, *, email: bool) -> dict[str, str]:
    form = {"webhook_url": url, "warn_minutes": "30, 5", "event_deploy_done": "on"}
    return {**form, "email": "on"} if email else form


def test_notification_settings_changes_are_audited_without_their_secrets(config: Path) -> None:
    keys: list[str] = []
    with webui_client(config, client=ADMIN_FROM) as admin, webui_client(config, client=DAVE_FROM) as dave:
        assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
        assert dave.login(DAVE, DAVE_PW).status_code == 303
        page = "/admin/notifications"
        r = admin.post("/admin/notifications/hosts", {"hosts": "hooks.example.org\n127.0.0.1"}, page=page)
        assert r.status_code == 303, r.text
        # The same list again: nothing changed, nothing recorded.
        r = admin.post("/admin/notifications/hosts", {"hosts": "127.0.0.1, hooks.example.org"}, page=page)
        assert r.status_code == 303
        # Dave's webhook: its first save shows the signing key once.
        r = dave.post("/settings/notifications", _channels(HOOK_URL, email=True), page=SETTINGS)
        assert r.status_code == 200, r.text
        keys += KEY_RE.findall(r.text)
        r = dave.post("/settings/notifications/secret", page=SETTINGS)
        assert r.status_code == 200
        keys += KEY_RE.findall(r.text)
        assert len(set(keys)) == 2
        # Mail off, webhook kept: a channel change. Then the same again, and only the warnings.
        assert dave.post("/settings/notifications", _channels(HOOK_URL, email=False), page=SETTINGS
                         ).status_code == 303
        assert dave.post("/settings/notifications", _channels(HOOK_URL, email=False), page=SETTINGS
                         ).status_code == 303
        # A refused URL changes nothing and records nothing.
        r = dave.post("/settings/notifications", _channels("http://10.9.9.9/x", email=False), page=SETTINGS)
        assert r.status_code == 400
        assert dave.post("/settings/notifications", _channels("", email=False), page=SETTINGS
                         ).status_code == 303
        # The admin narrows the gate, then sets, replaces and clears the SMTP password.
        r = admin.post("/admin/notifications/hosts", {"hosts": "hooks.example.org"}, page=page)
        assert r.status_code == 303
        for password in (SMTP_PW, SMTP_PW2, "", ""):
            r = admin.post("/admin/notifications/smtp-password", {"password": password}, page=page)
            assert r.status_code == 303

        admin.get("/admin/audit")
        rows = [e for e in export(admin) if e["action"].startswith("notify.")]
    got = [(e["action"], e["actor"]["email"], e["source"], e["detail"]) for e in rows]
    origin = "http://127.0.0.1:9"
    assert got == [
        ("notify.hosts", ADMIN_EMAIL, ADMIN_FROM[0],
         {"before": [], "after": ["127.0.0.1", "hooks.example.org"],
          "added": ["127.0.0.1", "hooks.example.org"], "removed": []}),
        ("notify.channels", DAVE, DAVE_FROM[0],
         {"email": {"before": True, "after": True}, "webhook": hook("", origin, True),
          "signing": "new key made"}),
        ("notify.webhook_key", DAVE, DAVE_FROM[0], {"signing": "new key made"}),
        ("notify.channels", DAVE, DAVE_FROM[0],
         {"email": {"before": True, "after": False}, "webhook": hook(origin, origin, False)}),
        ("notify.channels", DAVE, DAVE_FROM[0],
         {"email": {"before": False, "after": False}, "webhook": hook(origin, "", True)}),
        ("notify.hosts", ADMIN_EMAIL, ADMIN_FROM[0],
         {"before": ["127.0.0.1", "hooks.example.org"], "after": ["hooks.example.org"],
          "added": [], "removed": ["127.0.0.1"]}),
        ("notify.smtp_password", ADMIN_EMAIL, ADMIN_FROM[0], {"change": "set"}),
        ("notify.smtp_password", ADMIN_EMAIL, ADMIN_FROM[0], {"change": "replaced"}),
        ("notify.smtp_password", ADMIN_EMAIL, ADMIN_FROM[0], {"change": "cleared"}),
    ]
    dave_id = rows[1]["actor"]["id"]
    assert rows[1]["target"] == {"kind": "user", "id": str(dave_id)}
    assert rows[0]["target"] == {"kind": "setting", "id": "webhook_hosts"}
    assert rows[-1]["target"] == {"kind": "setting", "id": "smtp_password"}
    stored = table_text(config)
    for secret in (SMTP_PW, SMTP_PW2, HOOK_PATH, "querySecret55", *keys):
        assert secret not in stored, secret


def test_the_audit_page_lists_the_notification_actions(config: Path) -> None:
    with webui_client(config, client=ADMIN_FROM) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        text = admin.get("/admin/audit").text
    for action in ("notify.hosts", "notify.smtp_password", "notify.channels", "notify.webhook_key"):
        assert action in text, action


def test_the_smtp_password_command_is_audited(config: Path) -> None:
    """`piseduce webui smtp-password` (stdin) records the command and the OS account as actor,
    "local" as source; the password itself is nowhere in the trail."""
    import getpass
    import subprocess

    from helpers.agent_helpers import piseduce_cmd, subprocess_env

    for line in (SMTP_PW, ""):
        run = subprocess.run(piseduce_cmd("webui", "smtp-password", str(config)), input=line + "\n",
                             capture_output=True, text=True, env=subprocess_env(), timeout=120)
        assert run.returncode == 0, run.stderr
    with webui_client(config, client=ADMIN_FROM) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        rows = export(admin, "?action=notify.smtp_password")
    assert [(e["actor"], e["source"], e["detail"]) for e in rows] == [
        ({"id": None, "email": f"piseduce webui smtp-password ({getpass.getuser()})"}, "local", {"change": c})
        for c in ("set", "cleared")
    ]
    assert SMTP_PW not in table_text(config)
