"""The operators' audit trail (webui/audit.py): one sequence of what users and an admin do (sign
up, a refused login, approval, login, a token made and revoked, a password changed, an agent
added, the admin destroying another user's reservation on a real agent), then the admin page,
its filters and paging, the JSON-lines export and /api/v1/audit; admins only; no secret used
anywhere in the sequence is in the table or the export; retention purges by age only."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.api_helpers import API, bearer, make_token
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD, TOKEN
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    add_agent_form,
    add_user,
    book_on,
    reservation,
    webui_client,
    write_webui_config,
)
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory, write_session
from piseduce.webui import audit
from piseduce.webui.models import AuditEvent

pytestmark = pytest.mark.usefixtures("fast_argon2")

CAROL = "carol@example.org"
CAROL_PW = "carol-first-Secret-9f3k"
CAROL_PW2 = "carol-second-Secret-7q2z"
SECRET_RE = re.compile(r'id="token-secret">(pst_[A-Za-z0-9_-]{43})<')
ADMIN_FROM, CAROL_FROM = ("198.51.100.7", 40001), ("192.0.2.10", 40002)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path_factory.mktemp("agents") / "rpi-lab", nodes=8)
    yield a
    a.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    return cfg


def token_in_settings(b: Browser, name: str) -> str:
    r = b.post("/settings/tokens", {"name": name, "scope": "write"}, page="/settings?tab=tokens")
    assert r.status_code == 200, r.text
    m = SECRET_RE.search(r.text)
    assert m, "no token secret on the page"
    return m.group(1)


def export(b: Browser, query: str = "") -> list[dict[str, Any]]:
    r = b.get(f"/admin/audit/export{query}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = r.text.splitlines()
    assert r.text == "" or r.text.endswith("\n")
    return [json.loads(line) for line in lines]  # every line is one JSON object


def table_text(config: Path) -> str:
    """Every byte of the audit table, as SQLite stores it."""
    path = load_webui_config(config).database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        return "\n".join(repr(row) for row in con.execute("SELECT * FROM audit_events"))


def run_sequence(config: Path, agent: AgentProcess, nodes: tuple[str, str]) -> dict[str, str]:
    """The sequence of the module docstring on two free `nodes`; the secrets it used."""
    secrets = {"carol": CAROL_PW, "carol2": CAROL_PW2, "admin": ADMIN_PASSWORD, "agent": TOKEN}
    with webui_client(config, client=CAROL_FROM) as carol, webui_client(config, client=ADMIN_FROM) as admin:
        r = carol.post("/signup", {"email": CAROL, "password": CAROL_PW, "confirm": CAROL_PW}, page="/signup")
        assert r.status_code == 303
        assert carol.login(CAROL, CAROL_PW).status_code == 401  # not approved yet
        # A password typed into the email box is never recorded as the "email" tried.
        assert carol.login(CAROL_PW2, CAROL_PW).status_code == 401
        assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
        carol_id = re.search(r'action="/admin/users/(\d+)/approve"', admin.get("/admin/users").text)
        assert carol_id
        r = admin.post(f"/admin/users/{carol_id.group(1)}/approve", page="/admin/users")
        assert r.status_code == 303
        r = admin.post("/admin/agents", add_agent_form("rpi-lab", agent.port), page="/admin/agents")
        assert r.status_code == 303, r.text
        assert carol.login(CAROL, CAROL_PW).status_code == 303
        secrets["token"] = token_in_settings(carol, "laptop")
        listing = carol.get("/settings?tab=tokens").text
        token_id = re.search(r'action="/settings/tokens/(\d+)/revoke"', listing)
        assert token_id
        r = carol.post(f"/settings/tokens/{token_id.group(1)}/revoke", page="/settings?tab=tokens")
        assert r.status_code == 303
        change = {"current": CAROL_PW, "password": CAROL_PW2, "confirm": CAROL_PW2}
        r = carol.post("/settings/password", change, page="/settings?tab=password")
        assert r.status_code == 303 and "Password changed" in carol.get("/settings?tab=password").text
        # Carol's reservation, destroyed by the admin on Manage.
        rid = book_on(agent, CAROL, [nodes[0]])[0]
        r = admin.post("/manage/action", {"action": "destroy", "sel": f"1:{rid}"}, page="/manage")
        assert r.status_code == 200 and 'class="flash ok"' in r.text, r.text
        ended = ("ended", "cancelled")
        wait_until_sync(lambda: reservation(agent, CAROL, rid)["status"] in ended, timeout=30)
        # Her own action on her own reservation is not the trail's business.
        own = book_on(agent, CAROL, [nodes[1]])[0]
        r = carol.post("/manage/action", {"action": "destroy", "sel": f"1:{own}"}, page="/manage")
        assert 'class="flash ok"' in r.text, r.text
        secrets["rid"] = str(rid)
    return secrets


def test_a_sequence_is_on_the_audit_page_with_who_and_where(config: Path, agent: AgentProcess) -> None:
    secrets = run_sequence(config, agent, ("pi-1", "pi-2"))
    with webui_client(config, client=ADMIN_FROM) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        rows = export(admin)
        actions = [(e["action"], e["actor"]["email"], e["source"]) for e in rows]
        expected = [
            ("signup", CAROL, CAROL_FROM[0]),
            ("login.failed", CAROL, CAROL_FROM[0]),
            ("login.failed", "", CAROL_FROM[0]),
            ("login", ADMIN_EMAIL, ADMIN_FROM[0]),
            ("user.approve", ADMIN_EMAIL, ADMIN_FROM[0]),
            ("agent.add", ADMIN_EMAIL, ADMIN_FROM[0]),
            ("login", CAROL, CAROL_FROM[0]),
            ("token.create", CAROL, CAROL_FROM[0]),
            ("token.revoke", CAROL, CAROL_FROM[0]),
            ("password.change", CAROL, CAROL_FROM[0]),
            ("reservation.destroy", ADMIN_EMAIL, ADMIN_FROM[0]),
            ("login", ADMIN_EMAIL, ADMIN_FROM[0]),  # this test's own login, last
        ]
        assert actions == expected
        by_action = {e["action"]: e for e in rows}
        destroy = by_action["reservation.destroy"]
        assert destroy["target"] == {"kind": "reservation", "id": f"rpi-lab/{secrets['rid']}"}
        assert destroy["detail"] == {"owner": CAROL, "node": "pi-1"}
        assert by_action["user.approve"]["detail"] == {"email": CAROL}
        assert by_action["agent.add"]["detail"]["port"] == agent.port
        assert by_action["token.create"]["detail"] == {"name": "laptop", "scope": "write"}
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", e["at"]) for e in rows)
        admin_id = by_action["user.approve"]["actor"]["id"]
        assert isinstance(admin_id, int)

        # The page: each row with its actor, its source and the time in the viewer's zone.
        page = admin.get("/admin/audit", headers={"X-Timezone": "Asia/Tokyo"})
        assert page.status_code == 200
        text = html.unescape(page.text)
        for action, email, source in expected[:-1]:
            assert f'data-action="{action}"' in text
            assert source in text and (email in text or not email)
        at = dt.datetime.fromisoformat(destroy["at"].replace("Z", "+00:00"))
        assert f'data-utc="{destroy["at"]}"' in text
        assert at.astimezone(dt.timezone(dt.timedelta(hours=9))).strftime("%I:%M %p") in text

        # No secret of the sequence in the table, on the page or in the export.
        stored, exported = table_text(config), admin.get("/admin/audit/export").text
        for name, secret in secrets.items():
            if name == "rid":
                continue
            for where, blob in (("table", stored), ("export", exported), ("page", text)):
                assert secret not in blob, f"the {name} secret is in the audit {where}"
            assert secret[:16] not in stored


def test_filters_paging_and_the_api(config: Path, agent: AgentProcess) -> None:
    run_sequence(config, agent, ("pi-3", "pi-4"))
    with webui_client(config, client=ADMIN_FROM) as admin, webui_client(config, client=CAROL_FROM) as carol:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        carol.login(CAROL, CAROL_PW2)
        mine = export(admin, f"?actor={CAROL}")
        assert mine and {e["actor"]["email"] for e in mine} == {CAROL}
        assert [e["action"] for e in export(admin, "?action=user.*")] == ["user.approve"]
        tokens = export(admin, "?action=token.create")
        assert len(tokens) == 1
        kind, ident = tokens[0]["target"]["kind"], tokens[0]["target"]["id"]
        assert [e["action"] for e in export(admin, f"?target_kind={kind}&target_id={ident}")] == [
            "token.create", "token.revoke"]
        carol_id = mine[-1]["actor"]["id"]
        assert {e["actor"]["email"] for e in export(admin, f"?actor={carol_id}")} == {CAROL}
        # A time range in the viewer's zone (datetime-local gives no offset).
        lagos = dt.timezone(dt.timedelta(hours=1))
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).astimezone(lagos)
        local = later.strftime("%Y-%m-%dT%H:%M")
        tz = {"X-Timezone": "Africa/Lagos"}  # UTC+1, no daylight saving
        assert admin.get(f"/admin/audit/export?since={local}", headers=tz).text == ""
        assert len(admin.get(f"/admin/audit/export?until={local}", headers=tz).text.splitlines()) >= 12
        page = admin.get(f"/admin/audit?since={local}", headers=tz).text
        assert "No event matches" in page
        # Bad filters: one clear 400, never a 5xx.
        for query in ("since=yesterday", "action=DROP TABLE", "since=2026-12-03&until=2026-12-01",
                      "before=x", "before=99999999999999999999999", "actor=" + "a" * 400):
            r = admin.get(f"/admin/audit?{query}")
            assert r.status_code == 400, (query, r.status_code)
            assert 'class="flash error"' in r.text
        assert admin.get("/admin/audit/export?since=yesterday").status_code == 400
        # A LIKE pattern typed by the admin matches literally.
        assert export(admin, "?actor=%25") == []

        # Non-admins: 403 on the page, the export and the API.
        assert carol.get("/admin/audit").status_code == 403
        assert carol.get("/admin/audit/export").status_code == 403
        carol_token = make_token(config, CAROL, "write")
        r = carol.c.get(f"{API}/audit", headers=bearer(carol_token))
        assert r.status_code == 403 and r.json()["detail"]
        # Admins: the same JSON lines from the API, with the same filters (times in UTC).
        admin_token = make_token(config, ADMIN_EMAIL, "read")
        r = admin.c.get(f"{API}/audit", params={"actor": CAROL}, headers=bearer(admin_token))
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        assert [json.loads(x) for x in r.text.splitlines()] == export(admin, f"?actor={CAROL}")
        r = admin.c.get(f"{API}/audit", params={"since": "never"}, headers=bearer(admin_token))
        assert r.status_code == 422 and "From" in r.json()["detail"]
        assert carol.c.get(f"{API}/audit").status_code == 403  # by her session, too

        # Paging: newest first, PAGE_SIZE per page, an Older link that continues without overlap.
        many = 120
        factory = session_factory(make_engine(load_webui_config(config).database_url))
        with write_session(factory) as s:
            who = audit.Who(None, "bulk@example.org", "203.0.113.5")
            for i in range(many):
                audit.record(s, who, "login.failed", ("", ""), {"n": i})
        seen: list[int] = []
        url = "/admin/audit?actor=bulk"
        while url:
            text = admin.get(url).text
            seen += [int(x) for x in re.findall(r'data-event="(\d+)"', text)]
            older = re.search(r'href="(/admin/audit\?[^"]*before=\d+[^"]*)" id="audit-older"', text)
            url = html.unescape(older.group(1)) if older else ""
        assert len(seen) == many and seen == sorted(seen, reverse=True) and len(set(seen)) == many


def test_the_trail_is_append_only_and_purged_by_age(config: Path) -> None:
    factory = session_factory(make_engine(load_webui_config(config).database_url))
    now = dt.datetime.now(dt.UTC)
    with write_session(factory) as s:
        who = audit.Who(7, "x@example.org", "192.0.2.1")
        audit.record(s, who, "login", ("user", 7))
        audit.record(s, who, "login", ("user", 7))
        s.flush()
        old = s.query(AuditEvent).order_by(AuditEvent.id).first()
        assert old is not None
        old.at = now - dt.timedelta(days=40)  # an event of 40 days ago (only a test changes one)
    with write_session(factory) as s:
        assert audit.purge(s, now, 0) == 0  # 0 keeps everything
        assert audit.purge(s, now, 60) == 0
        assert audit.purge(s, now, 30) == 1
    with write_session(factory) as s:
        assert s.query(AuditEvent).count() == 1
    with webui_client(config) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        # No route changes an event: every other method on the trail's URLs is refused.
        for path in ("/admin/audit", "/admin/audit/export", f"{API}/audit"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                r = admin.c.request(method, path)
                assert r.status_code in (401, 403, 405), (method, path, r.status_code)
    with write_session(factory) as s:
        assert s.query(AuditEvent).count() == 2  # the one kept, and the admin's login
    with pytest.raises(ValueError, match="not in audit.ACTIONS"):
        audit.record(factory(), audit.Who(None, "", ""), "made.up")


def test_no_secret_survives_in_a_detail() -> None:
    detail = {
        "name": "laptop",
        "password": "hunter2-long-password",
        "os_password": "x",
        "token": "abc",
        "api_key": "k",
        "community": "public-but-kept",
        "nested": {"secret": "s", "fine": "ok", "deeper": {"a": {"b": 1}}},
        "line": "Bearer pst_" + "A" * 43,
        "pem": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc",
        "fernet": "gAAAAAB" + "x" * 60,
        "long": "y" * 5000,
        "many": list(range(100)),
    }
    out = audit.clean(detail)
    text = json.dumps(out)
    for secret in ("hunter2", "pst_", "BEGIN", "gAAAAA", '"abc"', '"k"', '"s"'):
        assert secret not in text, secret
    assert out["name"] == "laptop" and out["nested"]["fine"] == "ok"
    assert out["nested"]["deeper"]["a"] == audit.REDACTED  # nesting is bounded
    assert len(out["long"]) == audit.TEXT_MAX and len(out["many"]) == audit.DETAIL_KEYS


def test_admin_actions_through_the_api_are_recorded(config: Path, agent: AgentProcess) -> None:
    add_user(config, CAROL, CAROL_PW)
    with webui_client(config, client=ADMIN_FROM) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        r = admin.post("/admin/agents", add_agent_form("rpi-lab", agent.port), page="/admin/agents")
        assert r.status_code == 303
        rid = book_on(agent, CAROL, ["pi-5"])[0]
        mine = book_on(agent, ADMIN_EMAIL, ["pi-6"])[0]
        admin_token = make_token(config, ADMIN_EMAIL, "write")
        for r_id in (rid, mine):
            r = admin.c.post(f"{API}/reservations/rpi-lab/{r_id}/destroy", headers=bearer(admin_token))
            assert r.status_code == 202, r.text
        rows = export(admin, "?action=reservation.*")
        assert [(e["action"], e["target"]["id"], e["detail"]["owner"]) for e in rows] == [
            ("reservation.destroy", f"rpi-lab/{rid}", CAROL)]


def test_the_admin_guide_lists_every_action_recorded() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "admin-guide.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_.]+)` \| ", guide, re.M))
    assert set(audit.ACTIONS) <= listed, set(audit.ACTIONS) - listed
    assert "audit_retention_days" in guide


def test_a_change_and_its_event_commit_together_or_not_at_all(config: Path) -> None:
    from piseduce.webui.models import User

    factory = session_factory(make_engine(load_webui_config(config).database_url))
    who = audit.Who(None, "eve@example.org", "192.0.2.66")

    def sign_up(s: Any) -> int:
        row = User(email="eve@example.org", password_hash="x", ssh_keys=[])
        s.add(row)
        s.flush()
        return int(row.id)

    # The event cannot be written (here: an action outside the catalogue): the change goes too.
    with pytest.raises(ValueError), write_session(factory) as s:
        audit.then(sign_up, who, "no.such", lambda uid: (("user", uid), {}))(s)
    with factory() as s:
        assert s.query(User).filter_by(email="eve@example.org").count() == 0
        assert s.query(AuditEvent).count() == 0
    with write_session(factory) as s:
        uid = audit.then(sign_up, who, "signup", lambda uid: (("user", uid), {}))(s)
    with factory() as s:
        row = s.query(AuditEvent).one()
        assert (row.action, row.target_id, row.actor_email) == ("signup", str(uid), "eve@example.org")


def test_admin_posts_of_configure_and_the_notification_settings_are_recorded(
    config: Path, agent: AgentProcess
) -> None:
    """An admin deploying and cancelling another user's reservations through /configure (a card
    posted with its reference), their own deployment (not recorded), the webhooks' allowed hosts
    and the SMTP password (recorded as set, never the password)."""
    add_user(config, CAROL, CAROL_PW)
    smtp_pw = "smtp-Secret-value-4k2q9z"
    with webui_client(config, client=ADMIN_FROM) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        r = admin.post("/admin/agents", add_agent_form("rpi-lab", agent.port), page="/admin/agents")
        assert r.status_code == 303
        carols, cancelled = book_on(agent, CAROL, ["pi-7"])[0], book_on(agent, CAROL, ["pi-8"])[0]
        mine = book_on(agent, ADMIN_EMAIL, ["pi-5"])[0]
        for rid in (carols, mine):
            data = {"bin": "exp1", "r0.ref": f"1:{rid}", "r0.environment": "tiny", "r0.__ssh": "1"}
            r = admin.post("/configure/deploy", data, page="/configure")
            assert r.status_code == 303, r.text
        r = admin.post("/configure/cancel", {"sel": f"1:{cancelled}"}, page="/configure")
        assert r.status_code == 303
        wait_until_sync(lambda: reservation(agent, CAROL, cancelled)["status"] == "cancelled", timeout=30)
        r = admin.post("/admin/notifications/hosts", {"hosts": "hooks.example.org"},
                       page="/admin/notifications")
        assert r.status_code == 303
        r = admin.post("/admin/notifications/smtp-password", {"password": smtp_pw},
                       page="/admin/notifications")
        assert r.status_code == 303
        rows = export(admin, "?action=reservation.*")
        assert sorted((e["action"], e["target"]["id"], e["detail"]["owner"], e["detail"]["node"])
                      for e in rows) == sorted([
            ("reservation.deploy", f"rpi-lab/{carols}", CAROL, "pi-7"),
            ("reservation.destroy", f"rpi-lab/{cancelled}", CAROL, "pi-8"),
        ])
        hosts = export(admin, "?action=notify.hosts")
        assert [e["detail"]["after"] for e in hosts] == [["hooks.example.org"]]
        password = export(admin, "?action=notify.smtp_password")
        assert [(e["actor"]["email"], e["detail"]) for e in password] == [(ADMIN_EMAIL, {"change": "set"})]
    assert smtp_pw not in table_text(config)
