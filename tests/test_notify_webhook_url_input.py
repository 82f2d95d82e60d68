"""A webhook URL with a control character or whitespace in it is refused (issue 17, fix17): a
CR/LF posted straight to the Settings form (no browser in the way) was saved verbatim with a 303.
The real app in-process, its form with its CSRF token; the host is allowed, so only the characters
can be what is refused. And a refused form comes back as submitted (ticks included), escaped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.webui_fixtures import add_user, webui_client, write_webui_config
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory, write_session
from piseduce.webui.models import User
from piseduce.webui.notify import store, webhook

ALICE, PASSWORD = "alice@example.org", "alice-password-1"


def _db(config: Path, fn: object) -> object:
    engine = make_engine(load_webui_config(config).database_url)
    try:
        with write_session(session_factory(engine)) as s:
            return fn(s)  # type: ignore[operator]
    finally:
        engine.dispose()


@pytest.mark.parametrize("bad", ["http://127.0.0.1:9/hook\r\nX-Evil: 1", "http://127.0.0.1:9/a\nb",
                                 "http://127.0.0.1:9/a b", "http://127.0.0.1:9/a\tb", "http://127.0.0.1:9/a\x00b",
                                 "http://127.0.0.1:9/a\x7fb"])
def test_control_characters_and_whitespace_in_the_url_are_refused(tmp_path: Path, bad: str) -> None:
    config = write_webui_config(tmp_path / "webui")
    add_user(config, ALICE, PASSWORD)
    _db(config, lambda s: store.set_webhook_hosts(s, ["127.0.0.1"]))
    assert "whitespace or control" in webhook.check_url(bad, ["127.0.0.1"])
    with webui_client(config) as b:
        assert b.login(ALICE, PASSWORD).status_code == 303
        form = {"email": "on", "warn_minutes": "30, 5", "webhook_url": bad}
        r = b.post("/settings/notifications", form, page="/settings?tab=notifications")
        assert r.status_code == 400, r.text
        assert "whitespace or control" in r.text
        # A good URL on the same form is still taken.
        form["webhook_url"] = "http://127.0.0.1:9/hook"
        r = b.post("/settings/notifications", form, page="/settings?tab=notifications")
        assert r.status_code == 200 and "whsec_" in r.text

    def url_of(s: object) -> str:
        uid = s.query(User).filter_by(email=ALICE).one().id  # type: ignore[attr-defined]
        return store.load_prefs(s, uid).webhook_url  # type: ignore[arg-type]

    assert _db(config, url_of) == "http://127.0.0.1:9/hook"


def test_a_refused_form_echoes_what_was_submitted_escaped(tmp_path: Path) -> None:
    """The refused form comes back as submitted (issue 17, eve: her ticks were replaced by the stored
    ones): a hostile URL and warnings are shown as text, not markup, and nothing is stored."""
    from piseduce.webui.notify.kinds import Notice

    config = write_webui_config(tmp_path / "webui")
    add_user(config, ALICE, PASSWORD)
    _db(config, lambda s: store.set_webhook_hosts(s, ["127.0.0.1"]))
    hostile = 'http://127.0.0.1:9/"><script>alert(1)</script>'
    with webui_client(config) as b:
        assert b.login(ALICE, PASSWORD).status_code == 303
        form = {"event_admin_action": "on", "warn_minutes": '45, <b>ten"', "webhook_url": hostile}
        r = b.post("/settings/notifications", form, page="/settings?tab=notifications")
        assert r.status_code == 400 and "Warnings:" in r.text
        assert "<script>alert(1)" not in r.text and "<b>ten" not in r.text
        assert 'value="http://127.0.0.1:9/&#34;&gt;&lt;script&gt;' in r.text
        assert 'value="45, &lt;b&gt;ten&#34;"' in r.text
        for n in Notice:  # only the one ticked comes back ticked; mail was unticked
            ticked = re.search(rf'id="event-{n.value}"\s+checked', r.text) is not None
            assert ticked == (n == Notice.ADMIN_ACTION), n
        assert re.search(r'id="notify-email"\s+checked', r.text) is None

    def prefs_of(s: object) -> store.Prefs:
        uid = s.query(User).filter_by(email=ALICE).one().id  # type: ignore[attr-defined]
        return store.load_prefs(s, uid)  # type: ignore[arg-type]

    prefs = _db(config, prefs_of)
    assert isinstance(prefs, store.Prefs) and prefs.webhook_url == "" and prefs.events == frozenset(Notice)
