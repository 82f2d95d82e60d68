"""Admin > Notifications says how many outbox rows were given up (issue 17, fix17: the line read
"0 waiting · 0 sent · given up", the number missing) and how many were dropped as outdated."""

from __future__ import annotations

import re
from pathlib import Path

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import add_user, webui_client, write_webui_config


def test_the_outbox_line_has_every_number(tmp_path: Path) -> None:
    config = write_webui_config(tmp_path / "webui")
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    with webui_client(config) as b:
        assert b.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
        r = b.get("/admin/notifications")
        assert r.status_code == 200
        line = re.search(r'<p id="outbox-counts">([^<]*)</p>', r.text)
        assert line, r.text[-3000:]
        assert line.group(1) == "0 waiting · 0 sent · 0 given up · 0 dropped (outdated)", line.group(1)
