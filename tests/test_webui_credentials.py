"""Settings checks Grid'5000 credentials with the testbed when they are saved: through a real g5k
agent (child process, real driver) on the Grid'5000 emulator, which enforces passwords. A login
the testbed refuses is not saved and the form comes back with it; one no agent can check is saved
with a warning; the saved one can be checked again."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import pytest

from helpers.g5k_fixtures import USERS, Emulator
from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    add_user,
    register_agent,
    webui_client,
    write_webui_config,
)

FLASH_RE = re.compile(r'<div class="flash (\w+)" role="(?:status|alert)">([^<]*)</div>')


def flashes(text: str) -> list[tuple[str, str]]:
    return [(k, html.unescape(m)) for k, m in FLASH_RE.findall(text)]


def save(b: Browser, login: str, password: str) -> httpx.Response:
    form = {"login": login, "password": password, "confirm": password}
    return b.post("/settings/credentials/g5k", form, page="/settings?tab=g5k")


def stored(config: Path, email: str) -> tuple[str, str | None]:
    from piseduce import crypto
    from piseduce.config import load_webui_config
    from piseduce.webui.models import User
    from test_webui_accounts import db_user

    user = db_user(config, email)
    assert isinstance(user, User)
    fernet = crypto.load_fernet(load_webui_config(config).key_path)
    return user.g5k_user, crypto.decrypt_str(fernet, user.g5k_password) if user.g5k_password else None


@pytest.mark.usefixtures("fast_argon2")
def test_settings_checks_grid5000_credentials_through_the_agent(
    tmp_path: Path, g5k_emulator: Emulator
) -> None:
    config = write_webui_config(tmp_path / "webui", agent_timeout_seconds=2.0)
    add_user(config, "fay@example.org", "fay-password")
    with webui_client(config) as b:
        b.login("fay@example.org", "fay-password")
        # No g5k agent yet: saved, and the page says plainly that nothing checked them.
        r = save(b, "bob", USERS["bob"])
        assert r.status_code == 303, r.text
        kind, text = flashes(b.get(r.headers["location"]).text)[0]
        assert kind == "warning" and "not checked: no Grid'5000 agent is registered" in text, text
        assert stored(config, "fay@example.org") == ("bob", USERS["bob"])

    folder = tmp_path / "g5k-nancy"
    folder.mkdir()
    (folder / "secret.key").write_bytes((tmp_path / "webui" / "secret.key").read_bytes())
    agent = AgentProcess(
        folder, nodes=0, executor=False, node_type="g5k", driver="", g5k_site="nancy",
        g5k_api_url=g5k_emulator.url,
    )  # fmt: skip
    try:
        register_agent(config, "g5k-nancy", agent.port, "g5k", site="nancy")
        with webui_client(config) as b:
            b.login("fay@example.org", "fay-password")
            # A wrong password: refused by Grid'5000, not saved, the login still in the form.
            r = save(b, "alice", "not-alices-password")
            assert r.status_code == 400, r.text
            kind, text = flashes(r.text)[0]
            assert kind == "error" and "nothing was saved" in text, text
            assert "refused the login 'alice'" in text and "checked through g5k-nancy" in text, text
            # Said once: who refused, then what it means.
            assert text.count("refused") == 1 and text.count("Grid'5000") == 1, text
            assert 'id="login" type="text" name="login" value="alice"' in r.text
            assert "not-alices-password" not in r.text
            assert stored(config, "fay@example.org") == ("bob", USERS["bob"])
            # The right one: checked, then saved.
            r = save(b, "alice", USERS["alice"])
            assert r.status_code == 303, r.text
            kind, text = flashes(b.get(r.headers["location"]).text)[0]
            assert kind == "ok" and "saved and checked: Grid'5000 accepted the login alice" in text, text
            assert stored(config, "fay@example.org") == ("alice", USERS["alice"])
            # Checked again on demand; a testbed that cannot answer is "unknown", never "refused".
            r = b.post("/settings/credentials/g5k/check", page="/settings?tab=g5k")
            kind, text = flashes(b.get(r.headers["location"]).text)[0]
            assert kind == "ok" and text.startswith("Grid'5000 credentials: they work"), text
            g5k_emulator.faults(error_rate=1.0)
            try:
                r = b.post("/settings/credentials/g5k/check", page="/settings?tab=g5k")
                kind, text = flashes(b.get(r.headers["location"]).text)[0]
            finally:
                g5k_emulator.faults(error_rate=0.0)
            assert kind == "warning" and "unknown: not checked" in text and "g5k-nancy" in text, text
            assert stored(config, "fay@example.org") == ("alice", USERS["alice"])
    finally:
        agent.stop()
