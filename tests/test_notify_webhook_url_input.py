"""A webhook URL with a control character or whitespace in it is refused (issue 17, fix17): a
CR/LF posted straight to the Settings form (no browser in the way) was saved verbatim with a 303.
The real app in-process, its form with its CSRF token; the host is allowed, so only the characters
can be what is refused."""

from __future__ import annotations

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
