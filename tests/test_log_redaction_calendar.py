"""The calendar feed's secret (`/calendar/pcf_….ics`) never reaches the web UI's log: the real
`piseduce webui serve` at log level info writes uvicorn's access lines with the path's secret
replaced by `pcf_…` (issue 17, fix17)."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from helpers.webui_fixtures import WebuiProcess, write_webui_config


def test_the_feed_secret_in_an_access_line_is_redacted(tmp_path: Path) -> None:
    cfg = write_webui_config(tmp_path / "webui")
    webui = WebuiProcess(cfg, "--log-level", "info")
    try:
        secret = "pcf_" + secrets.token_urlsafe(32)
        r = httpx.get(f"{webui.url}/calendar/{secret}.ics", timeout=10)
        assert r.status_code == 404
        r = httpx.get(f"{webui.url}/calendar/{secret}", timeout=10)
        assert r.status_code == 404
    finally:
        webui.stop()
    log = (tmp_path / "webui" / "webui.log").read_text()
    assert "/calendar/pcf_….ics" in log, log[-2000:]  # the access line is there, redacted
    assert secret not in log and secret[4:20] not in log, log[-2000:]
