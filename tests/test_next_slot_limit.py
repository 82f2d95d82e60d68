"""The next-slot question's rate limit (issue 17, fix17b #4): each user may ask a burst of
NEXT_SLOT_FREE questions, then waits (429, Retry-After, a sentence saying how long) — on the
users' API and the Reserve page alike, counted per user (another user is not slowed down) and in
the web UI database, so that two web UI workers share one count. The questions used here are
refused for a repeated node (a 422 that asks no agent): the limit applies before anything else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.api_helpers import API, make_token
from helpers.webui_fixtures import SilentPort, add_user, register_agent, webui_client, write_webui_config
from piseduce.webui.throttle import default_rules

pytestmark = pytest.mark.usefixtures("fast_argon2")
ALICE, BOB = "alice@example.org", "bob@example.org"
BODY = {"nodes": [{"agent": "rpi-lab", "node": "pi-1"}] * 2, "hours": 1}


def test_next_slot_is_limited_per_user_across_workers(tmp_path: Path) -> None:
    free = default_rules()["next-slot"].free
    config = write_webui_config(tmp_path / "webui")
    add_user(config, ALICE, "alice-password-1")
    add_user(config, BOB, "bob-password-1")
    silent = SilentPort()
    try:
        agent_id = register_agent(config, "rpi-lab", silent.port, "raspberry")
        alice = {"Authorization": f"Bearer {make_token(config, ALICE)}"}
        bob = {"Authorization": f"Bearer {make_token(config, BOB)}"}
        # Two web UI apps on one database: two workers.
        with webui_client(config) as one, webui_client(config) as two:
            # The burst passes, alternating workers (a slow host may leak a question or two
            # back meanwhile: one every leak_seconds).
            answered = 0
            for i in range(free + 5):
                r = (one, two)[i % 2].c.post(f"{API}/next-slot", json=BODY, headers=alice)
                if r.status_code == 429:
                    break
                assert r.status_code == 422, (i, r.text)
                answered += 1
            assert free <= answered < free + 5
            for worker in (one, two):
                r = worker.c.post(f"{API}/next-slot", json=BODY, headers=alice)
                assert r.status_code == 429, r.text
                wait = int(r.headers["Retry-After"])
                assert wait >= 1
                assert re.fullmatch(r"Too many next-slot questions from your account\. "
                                    r"Wait \d+ (s|min) and try again\.", r.json()["detail"]), r.text
            # The Reserve page's button: the same count for the same user.
            assert one.login(ALICE, "alice-password-1").status_code == 303
            form = {"mode": "nodes", "node": [f"{agent_id}/pi-1"] * 2, "duration": "1", "when": "now"}
            r = one.post("/reserve/next-slot", form, page="/reserve")
            assert r.status_code == 429 and "Retry-After" in r.headers
            assert r.json()["detail"].startswith("Too many next-slot questions")
            # Bob is not slowed down by Alice.
            r = two.c.post(f"{API}/next-slot", json=BODY, headers=bob)
            assert r.status_code == 422, r.text
    finally:
        silent.close()
