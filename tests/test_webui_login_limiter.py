"""The login limiter (issue 11, defect 3): an attacker slows down only themselves, the rightful
owner gets in from a fresh browser elsewhere and from a known browser even during an attack from
everywhere, X-Forwarded-For is believed only from trusted proxies, current-password checks are
limited too, and the counters hold across several web UI processes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.server_probes import http_browser
from helpers.webui_fixtures import (
    Browser,
    WebuiProcess,
    add_user,
    free_port,
    webui_client,
    webui_clients,
    write_webui_config,
)
from piseduce import crypto
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.webui.models import Base, User

ATTACKER = "203.0.113.5"
OWNER_HOME = "198.51.100.7"


def login(b: Browser, email: str, password: str, address: str | None = None) -> tuple[int, str]:
    """A login from a client at `address`, as a trusted reverse proxy reports it (none: direct)."""
    headers = {"X-Forwarded-For": address} if address else {}
    r = b.post("/login", {"email": email, "password": password}, headers=headers)
    return r.status_code, r.text


@pytest.fixture
def proxied(tmp_path: Path, fast_argon2: None) -> Path:  # noqa: F811
    """A web UI behind a reverse proxy on loopback (the default trusted_proxies)."""
    cfg = write_webui_config(tmp_path / "webui", proxy_headers=True, login_account_free_failures=10)
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    return cfg


def test_an_attacker_slows_down_only_themselves(proxied: Path) -> None:
    """Ten wrong passwords for the admin's known address from one source used to lock the admin
    out from everywhere; now only that source waits."""
    with webui_clients(proxied, 2) as (attacker, owner):
        codes = [login(attacker, ADMIN_EMAIL, f"guess-{i}", ATTACKER)[0] for i in range(12)]
        # The owner, in a browser that never logged in before, from another address: in at once.
        assert login(owner, ADMIN_EMAIL, ADMIN_PASSWORD, OWNER_HOME)[0] == 303
        assert codes == [401] * 5 + [429] * 7
        code, text = login(attacker, ADMIN_EMAIL, ADMIN_PASSWORD, ATTACKER)
        assert code == 429 and "Too many failed logins for this account from your address" in text
        # The wait in the page is also the header's, for scripts and proxies (it had none).
        r = attacker.post(
            "/login", {"email": ADMIN_EMAIL, "password": "x"}, headers={"X-Forwarded-For": ATTACKER}
        )
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 3600, r.headers
        # The attacker's other targets are not locked either (below the per-source limit).
        assert login(attacker, "someone@example.org", "guess", ATTACKER)[0] == 401


def test_a_known_browser_gets_in_during_an_attack_from_everywhere(proxied: Path) -> None:
    with webui_clients(proxied, 3) as (owner, attacker, fresh):
        assert login(owner, ADMIN_EMAIL, ADMIN_PASSWORD, OWNER_HOME)[0] == 303  # device cookie given
        owner.post("/logout", page="/settings")
        # Many addresses, a few tries each: over the account's limit for unknown browsers.
        for i in range(12):
            attacker.c.cookies.clear()
            login(attacker, ADMIN_EMAIL, f"guess-{i}", f"192.0.2.{i + 1}")
        code, text = login(fresh, ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.200")
        assert code == 429 and "browsers it was never used in" in text
        # A forged device cookie is an unknown browser.
        fresh.c.cookies.set("piseduce_device", "x" * 22 + "." + "0" * 43, domain="testserver.local")
        assert login(fresh, ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.201")[0] == 429
        # The owner's own browser passes, from wherever it is now.
        assert login(owner, ADMIN_EMAIL, ADMIN_PASSWORD, "100.64.0.9")[0] == 303
        assert owner.get("/admin/users").status_code == 200


def test_forwarded_addresses_are_believed_only_from_trusted_proxies(
    tmp_path: Path,
    fast_argon2: None,  # noqa: F811
) -> None:
    for extra, client in (
        ({}, ("127.0.0.1", 40000)),  # proxy_headers off: the header is anyone's
        ({"proxy_headers": True}, ("10.9.9.9", 40000)),  # on, but this peer is no trusted proxy
    ):
        cfg = write_webui_config(tmp_path / f"webui-{len(extra)}", **extra)
        add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
        with webui_client(cfg, client=client) as b:
            codes = [login(b, ADMIN_EMAIL, "guess", f"198.18.0.{i}")[0] for i in range(7)]
            assert codes == [401] * 5 + [429] * 2, (extra, codes)
    # Behind a trusted proxy, the client's address is the one the proxy saw, the rightmost of the
    # header: what a client writes at its left is not believed.
    cfg = write_webui_config(tmp_path / "webui-proxied", proxy_headers=True)
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    with webui_client(cfg) as b:
        codes = [login(b, ADMIN_EMAIL, "guess", f"198.18.1.{i}, {ATTACKER}")[0] for i in range(7)]
        assert codes == [401] * 5 + [429] * 2
        assert login(b, ADMIN_EMAIL, ADMIN_PASSWORD, f"{ATTACKER}, {OWNER_HOME}")[0] == 303


def test_current_password_checks_are_limited(proxied: Path) -> None:
    add_user(proxied, "ann@example.org", "ann-password")
    body = {"password": "ann-new-password", "confirm": "ann-new-password"}
    with webui_client(proxied) as thief:
        login(thief, "ann@example.org", "ann-password", ATTACKER)  # a stolen session, say
        for i in range(5):
            thief.post("/settings/password", {"current": f"guess-{i}", **body}, page="/settings")
            assert "current password is wrong" in thief.get("/settings?tab=password").text
        thief.post("/settings/password", {"current": "ann-password", **body}, page="/settings")
        assert "Too many wrong current passwords" in thief.get("/settings?tab=password").text
    with webui_client(proxied) as ann:
        assert login(ann, "ann@example.org", "ann-password", OWNER_HOME)[0] == 303  # unchanged, and in


def test_backoff_and_leak_arithmetic() -> None:
    from piseduce.webui.throttle import Key, Limiter, Rule

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    limiter = Limiter({"r": Rule(free=3, leak_seconds=600, base_delay=5, max_delay=60)})
    key = Key("r", "ann")
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def attempt(seconds: float) -> float | None:
        with sessions.begin() as s:
            refusal = limiter.attempt(s, [key], t0 + dt.timedelta(seconds=seconds))
            return None if refusal is None else refusal.wait

    assert [attempt(0), attempt(1), attempt(2)] == [None, None, None]  # the 3rd one starts a 5 s wait
    assert attempt(3) == pytest.approx(4)
    assert attempt(7) is None  # waited: counted, and now 10 s
    assert attempt(8) == pytest.approx(9)
    assert attempt(17) is None and attempt(17.5) == pytest.approx(19.5)  # 20 s
    assert attempt(37) is None and attempt(37.5) == pytest.approx(39.5)  # 40 s
    assert attempt(77) is None and attempt(78) == pytest.approx(59)  # capped at 60 s
    # One failure leaks away every 10 minutes: after an hour of quiet, six are forgotten.
    assert attempt(137 + 3600) is None
    with sessions.begin() as s:
        limiter.succeeded(s, [key])
    assert attempt(3800) is None


def concurrent_tries(url: str, n: int) -> list[bool]:
    """`n` tries of one key at once, each from its own thread and connection: which got through."""
    from concurrent.futures import ThreadPoolExecutor

    from piseduce.db import upgrade, write_session
    from piseduce.webui.throttle import Key, Limiter, Rule

    upgrade("webui", url)
    engine = make_engine(url, **({} if url.startswith("sqlite") else {"pool_size": n}))
    factory = session_factory(engine)
    limiter = Limiter({"r": Rule(free=5, leak_seconds=600)})
    now = dt.datetime.now(dt.UTC)

    def one(_i: int) -> bool:
        with write_session(factory) as s:
            return limiter.attempt(s, [Key("r", "ann"), Key("r", f"other-{_i % 2}")], now) is None

    try:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))
    finally:
        engine.dispose()


def test_tries_sent_at_once_are_counted_one_by_one(tmp_path: Path) -> None:
    assert sum(concurrent_tries(f"sqlite:///{tmp_path / 'webui.db'}", 16)) == 5


@pytest.mark.postgres
def test_tries_sent_at_once_are_counted_one_by_one_on_postgres(pg_url: str) -> None:
    assert sum(concurrent_tries(pg_url, 16)) == 5


def second_config(config: Path) -> Path:
    """A second web UI process on the same database, key and secret (another worker)."""
    data = json.loads(config.read_text())
    data["port_number"] = free_port()
    path = config.with_name("config_webui_2.json")
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[WebuiProcess, WebuiProcess]]:
    cfg = write_webui_config(tmp_path / "webui")
    engine = make_engine(load_webui_config(cfg).database_url)
    with session_factory(engine).begin() as s:
        s.add(
            User(
                email=ADMIN_EMAIL,
                password_hash=crypto.hash_password(ADMIN_PASSWORD),
                role="admin",
                state="active",
                ssh_keys=[],
            )
        )
    engine.dispose()
    a = WebuiProcess(cfg)
    try:
        b = WebuiProcess(second_config(cfg))
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


@pytest.mark.slow
def test_the_limit_holds_across_two_web_ui_processes(two_workers: tuple[WebuiProcess, WebuiProcess]) -> None:
    a, b = two_workers
    browsers = [http_browser(a.url), http_browser(b.url)]
    codes = [login(browsers[i % 2], ADMIN_EMAIL, f"guess-{i}")[0] for i in range(7)]
    assert codes == [401] * 5 + [429] * 2, codes
    for browser in browsers:  # both workers refuse now, the right password included
        assert login(browser, ADMIN_EMAIL, ADMIN_PASSWORD)[0] == 429
