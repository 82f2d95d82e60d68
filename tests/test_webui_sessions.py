"""Server-side sessions (issue 11, defect 5): a copy of a session cookie taken before a logout, a
password change, a revocation or a role change is worth nothing after it; the cookie holds a
random id and the database only its hash; cookies are Secure behind https; CSRF tokens belong
to one session."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import (
    Browser,
    WebuiProcess,
    add_user,
    csrf_of,
    webui_client,
    write_webui_config,
)
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.webui.models import User

pytestmark = pytest.mark.usefixtures("fast_argon2")
COOKIE = "piseduce_session"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, "ann@example.org", "ann-password")
    return cfg


def copy_of(b: Browser, other: Browser) -> Browser:
    """`other` now carries `b`'s session cookie, as a thief who copied it would."""
    other.c.cookies.clear()
    other.c.cookies.set(COOKIE, b.c.cookies[COOKIE], domain="testserver.local")
    return other


def in_session(b: Browser) -> bool:
    r = b.get("/settings", follow_redirects=False)
    assert r.status_code in (200, 303), r.status_code
    return r.status_code == 200


def rows(config: Path) -> list:  # type: ignore[type-arg]
    from piseduce.webui.models import WebSession

    engine = make_engine(load_webui_config(config).database_url)
    try:
        with session_factory(engine)() as s:
            return list(s.scalars(select(WebSession)))
    finally:
        engine.dispose()


def user_id(config: Path, email: str) -> int:
    engine = make_engine(load_webui_config(config).database_url)
    try:
        with session_factory(engine)() as s:
            uid = s.scalar(select(User.id).where(User.email == email))
            assert uid is not None
            return int(uid)
    finally:
        engine.dispose()


def test_a_copied_cookie_dies_at_logout(config: Path) -> None:
    with webui_client(config) as ann, webui_client(config) as thief:
        assert ann.login("ann@example.org", "ann-password").status_code == 303
        copy_of(ann, thief)
        assert in_session(thief)  # the copy works while the session lives...
        r = ann.post("/logout", page="/settings")
        assert r.status_code == 303
        assert "You are logged out." in ann.get("/login").text
        assert not in_session(thief)  # ...and not a moment after the logout
        assert not in_session(ann)


def test_password_change_ends_every_copy_and_keeps_this_browser(config: Path) -> None:
    with webui_client(config) as ann, webui_client(config) as laptop, webui_client(config) as thief:
        ann.login("ann@example.org", "ann-password")
        laptop.login("ann@example.org", "ann-password")
        copy_of(ann, thief)
        before = ann.c.cookies[COOKIE]
        r = ann.post(
            "/settings/password",
            {"current": "ann-password", "password": "ann-new-password", "confirm": "ann-new-password"},
            page="/settings",
        )
        assert r.status_code == 303
        assert in_session(ann) and ann.c.cookies[COOKIE] != before  # a new session for this browser
        assert not in_session(thief) and not in_session(laptop)


def test_revocation_and_role_changes_end_sessions_at_once(config: Path) -> None:
    ann_id = user_id(config, "ann@example.org")
    with webui_client(config) as admin, webui_client(config) as ann, webui_client(config) as thief:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        # A promotion ends the sessions: the new role is taken with a new login.
        ann.login("ann@example.org", "ann-password")
        copy_of(ann, thief)
        assert admin.post(f"/admin/users/{ann_id}/promote", page="/admin/users").status_code == 303
        assert not in_session(ann) and not in_session(thief)
        ann.login("ann@example.org", "ann-password")
        assert ann.get("/admin/users").status_code == 200
        # So does a demotion: the copy taken while she was an admin opens no admin page.
        copy_of(ann, thief)
        admin.post(f"/admin/users/{ann_id}/demote", page="/admin/users")
        assert thief.get("/admin/users", follow_redirects=False).status_code == 303
        assert not in_session(ann)
        # And a revocation.
        ann.login("ann@example.org", "ann-password")
        copy_of(ann, thief)
        admin.post(f"/admin/users/{ann_id}/revoke", page="/admin/users")
        assert not in_session(ann) and not in_session(thief)
        assert [r for r in rows(config) if r.user_id == ann_id] == []


def test_the_cookie_is_a_random_id_and_the_database_holds_its_hash(config: Path) -> None:
    with webui_client(config) as ann:
        r = ann.login("ann@example.org", "ann-password")
        header = r.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=lax" in header and "secure" not in header
        raw = ann.c.cookies[COOKIE]
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", raw)  # no data, no signature: an id
        mine = [r for r in rows(config) if r.user_id == user_id(config, "ann@example.org")]
        assert [r.id_hash for r in mine] == [hashlib.sha256(raw.encode()).hexdigest()]
        assert raw not in {r.id_hash for r in rows(config)}
        # Logging in again from the same browser replaces its session (no fixation of the old id).
        ann.login("ann@example.org", "ann-password")
        assert ann.c.cookies[COOKIE] != raw
        assert len([r for r in rows(config) if r.user_id is not None]) == 1


@pytest.mark.parametrize(
    ("extra", "secure"),
    [
        ({"public_url": "https://piseduce.example.org/"}, True),
        ({"public_url": "http://piseduce.example.org/"}, False),
        ({"public_url": "https://piseduce.example.org/", "secure_cookies": False}, False),
        ({"secure_cookies": True}, True),
    ],
)
def test_secure_cookies_follow_the_public_url(tmp_path: Path, extra: dict[str, object], secure: bool) -> None:
    cfg = write_webui_config(tmp_path / "webui", **extra)
    add_user(cfg, "ann@example.org", "ann-password")
    with webui_client(cfg, base_url="https://testserver") as b:  # as the TLS proxy serves it
        page = b.get("/login")
        for header in page.headers.get_list("set-cookie"):
            assert ("secure" in header.lower()) is secure, header
        # The login's own cookies too (the session, and the limiter's device cookie).
        r = b.c.post("/login", data={"email": "ann@example.org", "password": "ann-password",
                                     "csrf_token": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303
        cookies = r.headers.get_list("set-cookie")
        assert len(cookies) == 2 and all(("secure" in h.lower()) is secure for h in cookies), cookies


def test_a_csrf_token_belongs_to_one_session(config: Path) -> None:
    ann_id = user_id(config, "ann@example.org")
    with webui_client(config) as admin, webui_client(config) as other:
        before_login = csrf_of(admin.get("/login").text)
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        other.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        mine = csrf_of(admin.get("/admin/users").text)
        theirs = csrf_of(other.get("/admin/users").text)
        assert mine != theirs
        for token in (theirs, before_login):  # another session's token, or this one's before its login
            r = admin.c.post(f"/admin/users/{ann_id}/revoke", data={"csrf_token": token},
                             follow_redirects=False)
            assert r.status_code == 403 and "CSRF" in r.text
        r = admin.c.post(f"/admin/users/{ann_id}/revoke", data={"csrf_token": mine}, follow_redirects=False)
        assert r.status_code == 303


@pytest.fixture(params=["sqlite", "postgresql"])
def db_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    extra = {"db_url": request.getfixturevalue("pg_url")} if request.param == "postgresql" else {}
    return write_webui_config(tmp_path / "webui", **extra)


def test_concurrent_posts_of_one_visitor_share_its_session(db_config: Path) -> None:
    """A double-clicked button, or a script: several POSTs of one not-logged-in browser (one
    cookie, one CSRF token) each stored the flash message of its answer in a new row for the
    same id (IntegrityError: UNIQUE constraint failed: web_sessions.id_hash, a 500)."""
    import asyncio

    import httpx

    web = WebuiProcess(db_config)

    async def visitor() -> list[int]:
        async with httpx.AsyncClient(base_url=web.url, timeout=120) as c:
            token = csrf_of((await c.get("/signup")).text)
            assert COOKIE in c.cookies

            async def signup(i: int) -> int:
                form = {"email": f"twin{i}@example.org", "password": "a-long-password", "confirm":
                        "a-long-password", "csrf_token": token}
                return (await c.post("/signup", data=form)).status_code

            codes = list(await asyncio.gather(*(signup(i) for i in range(10))))
            # and the session still works: its message is shown, its token still accepted
            page = (await c.get("/login")).text
            assert "csrf_token" in page
            return codes

    try:
        codes = asyncio.run(visitor())
    finally:
        web.stop()
    assert all(code in (303, 429) for code in codes), codes
    assert codes.count(303) >= 2, codes


def test_a_visitor_whose_message_row_expired_gets_a_new_one(config: Path) -> None:
    """An anonymous row lives an hour, the cookie twelve: the next message for that cookie must
    replace the expired row, not collide with it (the same IntegrityError)."""
    import datetime as dt

    from sqlalchemy import update

    from piseduce.dbtypes import utcnow
    from piseduce.webui.models import WebSession

    with webui_client(config) as visitor:
        form = {"email": "late@example.org", "password": "a-long-password", "confirm": "a-long-password"}
        assert visitor.post("/signup", form, page="/signup").status_code == 303
        engine = make_engine(load_webui_config(config).database_url)
        try:
            with session_factory(engine)() as s:
                past = utcnow() - dt.timedelta(minutes=1)
                s.execute(update(WebSession).where(WebSession.user_id.is_(None)).values(expires_at=past))
                s.commit()
        finally:
            engine.dispose()
        form["email"] = "later@example.org"
        assert visitor.post("/signup", form, page="/signup").status_code == 303
        assert "Sign-up received" in visitor.get("/login").text
