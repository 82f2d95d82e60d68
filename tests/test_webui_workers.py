"""Several web UI workers (`piseduce webui serve --workers 2`): real processes on loopback.

A session made through one worker is good on the others (the same CSRF token too), the login
limiter counts failed logins of every worker in one total, and the background chores run in one
worker only. Each answer names its worker (X-Piseduce-Worker, set only when the tests ask for it);
every request opens its own connection (`Connection: close`), so the kernel spreads them over the
workers.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from helpers.webui_fixtures import WebuiProcess, add_user, csrf_of, write_webui_config
from piseduce.config import load_webui_config
from piseduce.webui.chores import ChoresLeader, lock_path
from piseduce.webui.worker import WORKER_HEADER, WORKER_HEADER_ENV

USER, PASSWORD = "alice@example.org", "alice-password-1"
CLOSE = {"Connection": "close"}
FREE = 4  # failed logins per account and address before the limiter makes one wait


def _start(tmp_path: Path, db_url: str | None) -> tuple[Path, WebuiProcess]:
    extra = {"db_url": db_url} if db_url else {}
    cfg = write_webui_config(
        tmp_path / "webui", login_free_failures=FREE, login_source_free_failures=10_000, **extra
    )
    add_user(cfg, USER, PASSWORD)
    return cfg, WebuiProcess(cfg, "--workers", "2", env={WORKER_HEADER_ENV: "1"})


async def _spread(c: httpx.AsyncClient, path: str, n: int) -> list[httpx.Response]:
    return list(await asyncio.gather(*(c.get(path, headers=CLOSE) for _ in range(n))))


async def _session_across_workers(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        token = csrf_of((await c.get("/login", headers=CLOSE)).text)
        r = await c.post("/login", data={"email": USER, "password": PASSWORD, "csrf_token": token},
                         headers=CLOSE)
        assert r.status_code == 303 and r.headers["location"].endswith("/reserve"), r.text[:300]
        logged_in_by = r.headers[WORKER_HEADER]
        seen: set[str] = set()
        for _ in range(20):  # until the answers came from both workers
            for answer in await _spread(c, "/settings", 8):
                assert answer.status_code == 200, (answer.status_code, answer.headers.get("location"))
                assert USER in answer.text
                seen.add(answer.headers[WORKER_HEADER])
            if len(seen) >= 2:
                break
        assert len(seen) >= 2, f"every answer came from one worker: {seen}"
        assert seen - {logged_in_by}, "no request landed on a worker other than the login's"
        # State changes (POSTs) on every worker: the session's CSRF token is good on all of them.
        token = csrf_of((await c.get("/settings", headers=CLOSE)).text)
        form = {"fingerprint": "SHA256:none", "csrf_token": token}
        posts = await asyncio.gather(*(c.post("/settings/ssh-keys/delete", data=form, headers=CLOSE)
                                       for _ in range(8)))
        assert all(p.status_code == 303 and "/settings" in p.headers["location"] for p in posts), \
            [(p.status_code, p.headers.get("location")) for p in posts]
        r = await c.post("/logout", data={"csrf_token": token}, headers=CLOSE)
        assert r.status_code == 303, r.text[:300]
        # Logged out on one worker: out on all of them.
        for answer in await _spread(c, "/settings", 8):
            assert answer.status_code == 303 and answer.headers["location"].endswith("/login")


async def _limit_in_total(url: str) -> None:
    """Wrong passwords sent at once, spread over both workers: exactly FREE are judged, the rest
    wait. A limiter of each worker's own would let FREE per worker through. The workers share one
    listening socket, so whichever is idle in accept() takes a burst; on a loaded machine one of
    them can take several bursts in a row (CI saw five), hence the many fresh accounts to try."""
    for attempt in range(25):
        email = f"target{attempt}@example.org"
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            token = csrf_of((await c.get("/login", headers=CLOSE)).text)
            form = {"email": email, "password": "wrong-password", "csrf_token": token}
            tries = (c.post("/login", data=form, headers=CLOSE) for _ in range(3 * FREE))
            answers = await asyncio.gather(*tries)
        codes = Counter(a.status_code for a in answers)
        assert set(codes) <= {401, 429}, codes
        assert codes[401] == FREE, codes
        assert all("Retry-After" in a.headers for a in answers if a.status_code == 429)
        if len({a.headers[WORKER_HEADER] for a in answers}) >= 2:
            return
    pytest.fail("the failed logins never spread over both workers")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_workers_share_sessions_limiter_and_chores(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    db_url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    cfg_path, web = _start(tmp_path, db_url)
    try:
        await _session_across_workers(web.url)
        await _limit_in_total(web.url)
        # The chores (health checks, housekeeping) are one worker's: its lock is held.
        cfg = load_webui_config(cfg_path)
        assert not ChoresLeader(lock_path(cfg.secret_path.parent, cfg.database_url)).try_take()
    finally:
        web.stop()


def test_chores_leader_is_one_and_hands_over(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "sqlite:///webui.db")
    first, second = ChoresLeader(path), ChoresLeader(path)
    assert first.try_take() and first.held
    assert not second.try_take() and not second.held
    assert lock_path(tmp_path, "sqlite:///other.db") != path  # another web UI's is its own
    first.release()  # its worker stopped: the next try of another takes them over
    assert second.try_take()
    second.release()
