"""The private calendar feed (issue 17), read back with a real RFC 5545 parser (the `icalendar`
package): hostile text escaped and folded right, one event per reservation of its owner only, the
sequence growing as a reservation changes, the secret stored only as a hash, regenerate = revoke,
and 404 for anything but a live secret. A real agent (fake driver, child process) behind an
in-process web UI."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import icalendar
import pytest

from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    add_user,
    agent_headers,
    book_on,
    register_agent,
    webui_client,
    write_webui_config,
)
from piseduce.webui import ical

pytestmark = pytest.mark.usefixtures("fast_argon2")
ALICE, BOB = "alice@example.org", "bob@example.org"
URL_RE = re.compile(
    r'<code class="mono" id="feed-url"[^>]*>(http://testserver/calendar/pcf_[A-Za-z0-9_-]{43}\.ics)</code>'
)


def parse(text: str) -> icalendar.Calendar:
    cal = icalendar.Calendar.from_ical(text)
    assert isinstance(cal, icalendar.Calendar)
    return cal


def events(cal: icalendar.Calendar) -> dict[str, Any]:
    return {str(e["UID"]): e for e in cal.walk("VEVENT")}


# ---------------------------------------------------------------- the text itself


def test_hostile_text_is_escaped_and_folded_as_rfc_5545_says() -> None:
    nasty = 'a,b;c\\d\ne "quoted" ' + "é" * 60 + " 🦜" * 20 + "\x00\x07\x1b end"
    now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    ev = ical.Event("u-1@x", now, now + dt.timedelta(hours=2), nasty, nasty + "\r\nline 2", now, 3, False)
    body = ical.calendar("cal, ; name", [ev], now)
    raw = body.encode()
    assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    for line in raw.split(b"\r\n"):
        assert len(line) <= 75, line
        line.decode()  # no UTF-8 character cut by a fold
    cal = parse(body)
    (got,) = cal.walk("VEVENT")
    clean = nasty.replace("\x00", "").replace("\x07", "").replace("\x1b", "")
    assert str(got["SUMMARY"]) == clean
    assert str(got["DESCRIPTION"]) == clean + "\nline 2"
    assert got.decoded("DTSTART") == now and got.decoded("DTEND") == now + dt.timedelta(hours=2)
    assert int(got["SEQUENCE"]) == 3 and str(got["UID"]) == "u-1@x"


# ---------------------------------------------------------------- the feed


class Lab:
    def __init__(self, root: Path) -> None:
        self.config = write_webui_config(root / "webui")
        add_user(self.config, ALICE, "alice-password")
        add_user(self.config, BOB, "bob-password")
        self.agent = AgentProcess(root / "rpi-lab", nodes=4, executor=False)
        register_agent(self.config, "rpi-lab", self.agent.port, "raspberry")
        self.root = root


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("calendar"))
    yield lab
    lab.agent.stop()


def make_url(b: Browser) -> str:
    r = b.post("/settings/calendar", {}, page="/settings?tab=calendar")
    assert r.status_code == 200, r.text
    found = URL_RE.search(r.text)
    assert found, r.text
    # Shown once: the page read again names no URL.
    assert found.group(1) not in b.get("/settings?tab=calendar").text
    return found.group(1).removeprefix("http://testserver")


def read(path: str, lab: Lab) -> httpx.Response:
    with webui_client(lab.config) as anonymous:  # a calendar app: no session, no cookie
        r: httpx.Response = anonymous.get(path)
        return r


def test_the_feed_shows_the_owners_reservations_and_follows_their_changes(lab: Lab) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=2)
    iso = start.isoformat().replace("+00:00", "Z")
    (now_id,) = book_on(lab.agent, ALICE, ["pi-1"], hours=1, bin="exp-1")
    (later_id,) = book_on(lab.agent, ALICE, ["pi-2"], start=iso, hours=2)
    book_on(lab.agent, BOB, ["pi-3"], hours=1, bin="bobs")
    with webui_client(lab.config) as b:
        b.login(ALICE, "alice-password")
        path = make_url(b)
        r = read(path, lab)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/calendar")
        got = events(parse(r.text))
        assert "pi-3" not in r.text and "bob" not in r.text.lower()
        assert len(got) == 2, list(got)
        later = next(e for e in got.values() if f"rpi-lab/{later_id}" in str(e["DESCRIPTION"]))
        first = next(e for e in got.values() if f"rpi-lab/{now_id}" in str(e["DESCRIPTION"]))
        assert later.decoded("DTSTART") == start and later.decoded("DTEND") == start + dt.timedelta(hours=2)
        assert later.decoded("DTSTART").tzinfo is not None and "Z" in later["DTSTART"].to_ical().decode()
        text = str(first["DESCRIPTION"])
        assert "Nodes: pi-1" in text and "Bin: exp-1" in text and "Agent: rpi-lab" in text, text
        assert "State: " in text and str(first["SUMMARY"]) == "pi-1 on rpi-lab [exp-1]"
        assert int(later["SEQUENCE"]) == 0 and int(first["SEQUENCE"]) == 0
        modified = later.decoded("LAST-MODIFIED")
        # The same again: nothing changed, nothing bumped.
        again = events(parse(read(path, lab).text))
        assert {u: int(e["SEQUENCE"]) for u, e in again.items()} == {u: 0 for u in got}
        # Alice extends the later one by an hour: same UID, a higher sequence, a new end.
        r = httpx.post(
            f"{lab.agent.url}/api/reservations/{later_id}/extend",
            json={"hours": 1},
            headers=agent_headers(ALICE),
            timeout=10,
        )
        assert r.status_code in (200, 202), r.text
        changed = events(parse(read(path, lab).text))
        assert set(changed) == set(got)
        moved = changed[str(later["UID"])]
        assert int(moved["SEQUENCE"]) == 1 and moved.decoded("DTEND") == start + dt.timedelta(hours=3)
        assert moved.decoded("LAST-MODIFIED") >= modified
        assert int(changed[str(first["UID"])]["SEQUENCE"]) == 0
        # Regenerate = revoke: the old URL is a 404, the new one works.
        new_path = make_url(b)
        assert new_path != path
        assert read(path, lab).status_code == 404
        assert read(new_path, lab).status_code == 200
        # Revoke: 404 from then on; Settings says there is none.
        r = b.post("/settings/calendar/revoke", {}, page="/settings?tab=calendar")
        assert r.status_code in (200, 303), r.text
        assert read(new_path, lab).status_code == 404
        assert "No calendar URL" in b.get("/settings?tab=calendar").text
        # Without the page's CSRF token, nothing is made.
        r = b.post("/settings/calendar", {}, csrf=False, page="/settings?tab=calendar")
        assert r.status_code in (400, 403), r.status_code
    # Made twice and revoked once: in the audit trail, without the secret.
    from sqlalchemy import select

    from piseduce.config import load_webui_config
    from piseduce.db import make_engine
    from piseduce.webui.models import AuditEvent

    engine = make_engine(load_webui_config(lab.config).database_url)
    try:
        with engine.connect() as c:
            actions = [a for (a,) in c.execute(select(AuditEvent.action)) if a.startswith("calendar.")]
    finally:
        engine.dispose()
    assert actions == ["calendar.create", "calendar.create", "calendar.revoke"], actions
    # Only hashes at rest: no secret of either URL in the database file (audit trail included).
    db = b"".join(p.read_bytes() for p in (lab.root / "webui").glob("*.db*"))
    for p in (path, new_path):
        assert p.split("/")[-1].removesuffix(".ics").encode() not in db


@pytest.mark.parametrize(
    "path",
    [
        "/calendar/pcf_" + "A" * 43 + ".ics",  # well formed, unknown
        "/calendar/pcf_short.ics",
        "/calendar/" + "x" * 5000 + ".ics",
        "/calendar/pcf_" + "A" * 43,  # no .ics
        "/calendar/%00.ics",
        "/calendar/..%2F..%2Fetc%2Fpasswd.ics",
    ],
)
def test_anything_but_a_live_secret_is_a_404(lab: Lab, path: str) -> None:
    r = read(path, lab)
    assert r.status_code == 404, (path, r.status_code)
    assert "BEGIN:VCALENDAR" not in r.text


def test_an_admin_destroying_a_reservation_raises_its_sequence(lab: Lab) -> None:
    # issue 17 (fix17): SEQUENCE stayed 0 after an administrator destroyed the reservation.
    (rid,) = book_on(lab.agent, ALICE, ["pi-4"], hours=1, bin="admin-cut")
    with webui_client(lab.config) as b:
        b.login(ALICE, "alice-password")
        path = make_url(b)
        before = {str(e["DESCRIPTION"]).split("Reservation: ")[1].split("\n")[0]: e
                  for e in events(parse(read(path, lab).text)).values()}
        assert int(before[f"rpi-lab/{rid}"]["SEQUENCE"]) == 0
        r = httpx.post(f"{lab.agent.url}/api/reservations/{rid}/destroy",
                       headers=agent_headers("root@example.org", admin=True), timeout=10)
        assert r.status_code in (200, 202), r.text
        after = {str(e["DESCRIPTION"]).split("Reservation: ")[1].split("\n")[0]: e
                 for e in events(parse(read(path, lab).text)).values()}
        assert f"rpi-lab/{rid}" in after, list(after)
        ev = after[f"rpi-lab/{rid}"]
        assert int(ev["SEQUENCE"]) == 1, (ev["SEQUENCE"], str(ev["DESCRIPTION"]))
