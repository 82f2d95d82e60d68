"""Web UI accounts, sessions, CSRF, settings and admin users (no agent needed)."""

from __future__ import annotations

import base64
import html
import re
import struct
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from helpers.agent_helpers import piseduce_cmd, subprocess_env
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import add_user, csrf_of, webui_client, write_webui_config
from piseduce import crypto
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.protocol import END_USER_RE
from piseduce.sshkeys import parse_key
from piseduce.webui.auth import ensure_first_admin
from piseduce.webui.models import User


def ed25519_line(seed: int = 1, comment: str = "me@laptop") -> str:
    kind = b"ssh-ed25519"
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32) + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


pytestmark = pytest.mark.usefixtures("fast_argon2")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui", login_free_failures=5)
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    return cfg


def db_user(config: Path, email: str) -> User | None:
    engine = make_engine(load_webui_config(config).database_url)
    try:
        with session_factory(engine)() as s:
            return s.scalar(select(User).where(User.email == email))
    finally:
        engine.dispose()


def test_signup_pending_until_approved(config: Path) -> None:
    with webui_client(config) as b:
        r = b.post(
            "/signup",
            {"email": "Ann@Example.org", "password": "ann-password", "confirm": "ann-password"},
            page="/signup",
        )
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert "administrator must approve" in b.get("/login").text
        pending = b.login("ann@example.org", "ann-password")
        wrong = b.login("ann@example.org", "not-her-password")
        unknown = b.login("nobody@example.org", "whatever-password")
        # One neutral message for every refusal: nothing tells a pending account from a wrong password.
        assert pending.status_code == wrong.status_code == unknown.status_code == 401
        msg = "Login failed: wrong email or password, or the account is not approved yet."
        assert msg in pending.text and msg in wrong.text and msg in unknown.text
        assert b.get("/reserve", follow_redirects=False).headers["location"] == "/login"

    user = db_user(config, "ann@example.org")
    assert user is not None and user.state == "pending" and user.password_hash.startswith("$argon2id$")
    with webui_client(config) as admin:
        assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
        page = admin.get("/admin/users").text
        assert "ann@example.org" in page and "Pending requests (1)" in page
        r = admin.post(f"/admin/users/{user.id}/approve", page="/admin/users")
        assert r.status_code == 303
    with webui_client(config) as b:
        assert b.login("ann@example.org", "ann-password").headers["location"] == "/reserve"
        assert "Reserve" in b.get("/reserve").text


def test_signup_validation(config: Path) -> None:
    with webui_client(config) as b:
        for data, reason in [
            ({"email": "not-an-email", "password": "long-enough", "confirm": "long-enough"}, "valid email"),
            ({"email": "x@example.org", "password": "short", "confirm": "short"}, "at least 8"),
            ({"email": "x@example.org", "password": "long-enough", "confirm": "different!"}, "differ"),
        ]:
            r = b.post("/signup", data, page="/signup")
            assert r.status_code == 400 and reason in r.text
    assert db_user(config, "x@example.org") is None


def test_signup_refuses_an_email_no_agent_accepts_as_its_user(config: Path) -> None:
    """The agents name a reservation's user by the X-Piseduce-User header (protocol.END_USER_RE):
    an address valid for e-mail but not for that rule made an account that could never book (the
    agent answered 400 to its every request). Sign-up refuses it, saying which characters to use;
    one the rule accepts signs up."""
    refused = ["o'brien@example.org", "a/b@example.org", "x" * 65 + "@example.org", "a{b}@example.org"]
    with webui_client(config) as b:
        for email in refused:
            r = b.post("/signup", {"email": email, "password": "long-enough", "confirm": "long-enough"},
                       page="/signup")
            assert r.status_code == 400 and "letters, digits" in html.unescape(r.text), (email, r.text[-500:])
            assert db_user(config, email) is None
    for email in ["first.last+lab@example.org", "a_b-c@sub.example.org"]:
        assert END_USER_RE.match(email)
        status, _, _ = signup_answer(config, email, "long-enough")
        assert status == 303 and db_user(config, email) is not None


def signup_answer(config: Path, email: str, password: str) -> tuple[int, str, str]:
    """(status, Location, the messages shown after it) of a sign-up from a fresh browser."""
    with webui_client(config) as b:
        r = b.post("/signup", {"email": email, "password": password, "confirm": password}, page="/signup")
        after = b.get(r.headers["location"]).text if r.status_code == 303 else r.text
        said = re.findall(r'<div class="flash[^"]*"[^>]*>(.*?)</div>', after, re.S)
        return r.status_code, r.headers.get("location", ""), html.unescape(" | ".join(said))


def test_signup_says_nothing_of_existing_accounts(config: Path) -> None:
    """Signing up with an address that has an account answers exactly as for a new address (no
    "already exists": a sign-up form must not tell who has an account), and changes nothing of
    the existing account (its password stays; no second row)."""
    add_user(config, "pending@example.org", "pending-pass", state="pending")
    new = signup_answer(config, "new@example.org", "new-password")
    answers = {
        "new": new,
        "active admin": signup_answer(config, ADMIN_EMAIL, "taken-over!"),
        "admin, other case": signup_answer(config, ADMIN_EMAIL.upper(), "taken-over!"),
        "pending account": signup_answer(config, "pending@example.org", "taken-over!"),
        "the new one again": signup_answer(config, "new@example.org", "second-password"),
    }
    status, location, page = new
    assert status == 303 and location == "/login"
    assert "administrator must approve" in page and "already exists" not in page
    for who, answer in answers.items():
        assert answer == new, who
    with webui_client(config) as b:
        assert b.login(ADMIN_EMAIL, "taken-over!").status_code == 401
        assert b.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
    pending, created = db_user(config, "pending@example.org"), db_user(config, "new@example.org")
    assert pending is not None and crypto.verify_password(pending.password_hash, "pending-pass")
    assert created is not None and crypto.verify_password(created.password_hash, "new-password")
    engine = make_engine(load_webui_config(config).database_url)
    try:
        with session_factory(engine)() as s:
            assert len(s.scalars(select(User)).all()) == 3
    finally:
        engine.dispose()


def test_csrf_rejected_and_get_changes_nothing(config: Path) -> None:
    add_user(config, "pending@example.org", "pending-pass", state="pending")
    target = db_user(config, "pending@example.org")
    assert target is not None
    with webui_client(config) as b:
        b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        no_token = b.post(f"/admin/users/{target.id}/approve", csrf=False)
        wrong = b.c.post(
            f"/admin/users/{target.id}/approve", data={"csrf_token": "x" * 43}, follow_redirects=False
        )
        header = b.c.post(
            f"/admin/users/{target.id}/approve", headers={"X-CSRF-Token": "forged"}, follow_redirects=False
        )
        for r in (no_token, wrong, header):
            assert r.status_code == 403 and "CSRF" in r.text
        # No GET route changes anything: state-changing URLs answer 405 to GET.
        assert b.get(f"/admin/users/{target.id}/approve").status_code == 405
        assert b.get("/logout").status_code == 405
        assert db_user(config, "pending@example.org").state == "pending"  # type: ignore[union-attr]
        # The htmx header form of the token works.
        token = csrf_of(b.get("/admin/users").text)
        ok = b.c.post(
            f"/admin/users/{target.id}/approve", headers={"X-CSRF-Token": token}, follow_redirects=False
        )
        assert ok.status_code == 303
    assert db_user(config, "pending@example.org").state == "active"  # type: ignore[union-attr]
    # A login form posted without the token is refused too (login CSRF).
    with webui_client(config) as b:
        r = b.post("/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, csrf=False)
        assert r.status_code == 403


def test_login_rate_limited(config: Path) -> None:
    with webui_client(config) as b:
        codes = [b.login(ADMIN_EMAIL, "wrong-password").status_code for _ in range(5)]
        assert codes == [401] * 5
        r = b.login(ADMIN_EMAIL, ADMIN_PASSWORD)  # even the right password waits now
        assert r.status_code == 429 and "Too many" in r.text


def test_last_admin_cannot_be_removed_or_demoted(config: Path) -> None:
    admin = db_user(config, ADMIN_EMAIL)
    assert admin is not None
    with webui_client(config) as b:
        b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        for action in ("demote", "remove", "revoke"):
            r = b.post(f"/admin/users/{admin.id}/{action}", page="/admin/users")
            assert r.status_code == 303
            assert "last admin" in b.get("/admin/users").text
        assert db_user(config, ADMIN_EMAIL).role == "admin"  # type: ignore[union-attr]
        # With a second admin, the first may step down.
        add_user(config, "second@example.org", "second-pass")
        second = db_user(config, "second@example.org")
        b.post(f"/admin/users/{second.id}/promote", page="/admin/users")  # type: ignore[union-attr]
        b.post(f"/admin/users/{admin.id}/demote", page="/admin/users")
    assert db_user(config, ADMIN_EMAIL).role == "user"  # type: ignore[union-attr]
    assert db_user(config, "second@example.org").role == "admin"  # type: ignore[union-attr]


def test_non_admin_cannot_reach_admin_pages(config: Path) -> None:
    add_user(config, "bob@example.org", "bob-password")
    with webui_client(config) as b:
        b.login("bob@example.org", "bob-password")
        assert b.get("/admin/users").status_code == 403
        assert b.get("/admin/agents").status_code == 403
        admin = db_user(config, ADMIN_EMAIL)
        r = b.post(f"/admin/users/{admin.id}/demote", page="/reserve")  # type: ignore[union-attr]
        assert r.status_code == 403
        assert "(admin) Agents" not in b.get("/settings").text
    assert db_user(config, ADMIN_EMAIL).role == "admin"  # type: ignore[union-attr]


def test_password_change_needs_current_and_ends_other_sessions(config: Path) -> None:
    add_user(config, "carl@example.org", "carl-password")
    with webui_client(config) as other, webui_client(config) as b:
        other.login("carl@example.org", "carl-password")
        b.login("carl@example.org", "carl-password")
        r = b.post(
            "/settings/password",
            {"current": "bad-guess", "password": "new-password-1", "confirm": "new-password-1"},
            page="/settings",
        )
        assert "current password is wrong" in b.get("/settings?tab=password").text
        r = b.post(
            "/settings/password",
            {"current": "carl-password", "password": "new-password-1", "confirm": "new-password-1"},
            page="/settings",
        )
        assert r.status_code == 303
        assert b.get("/settings").status_code == 200  # this session stays
        assert other.get("/settings", follow_redirects=False).headers["location"] == "/login"
    with webui_client(config) as b:
        assert b.login("carl@example.org", "carl-password").status_code == 401
        assert b.login("carl@example.org", "new-password-1").status_code == 303


def test_revoked_user_is_logged_out_at_once(config: Path) -> None:
    add_user(config, "dan@example.org", "dan-password")
    dan = db_user(config, "dan@example.org")
    with webui_client(config) as admin, webui_client(config) as b:
        b.login("dan@example.org", "dan-password")
        assert b.get("/settings").status_code == 200
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        admin.post(f"/admin/users/{dan.id}/revoke", page="/admin/users")  # type: ignore[union-attr]
        assert b.get("/settings", follow_redirects=False).headers["location"] == "/login"


def test_ssh_keys_validated_and_escaped(config: Path) -> None:
    add_user(config, "eve@example.org", "eve-password")
    with webui_client(config) as b:
        b.login("eve@example.org", "eve-password")
        evil = ed25519_line(2, "<script>alert(1)</script>")
        r = b.post("/settings/ssh-keys", {"keys": ed25519_line(1) + "\n" + evil}, page="/settings")
        assert r.status_code == 303
        page = b.get("/settings?tab=ssh").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
        assert parse_key(ed25519_line(1)).fingerprint in page
        for bad, reason in [
            ("ssh-ed25519 not-base64!!", "not valid base64"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "PRIVATE"),
            ("ssh-foo AAAA", "unknown key type"),
            (ed25519_line(1).replace("ssh-ed25519", "ssh-rsa", 1), "does not hold a ssh-rsa key"),
        ]:
            # Refused with the reason, and the text comes back in the field to be corrected.
            r = b.post("/settings/ssh-keys", {"keys": bad}, page="/settings")
            assert r.status_code == 400 and reason in r.text
            assert f"{html.escape(bad, quote=False)}</textarea>" in r.text
        fp = parse_key(ed25519_line(1)).fingerprint
        b.post("/settings/ssh-keys/delete", {"fingerprint": fp}, page="/settings")
    user = db_user(config, "eve@example.org")
    assert user is not None and len(user.ssh_keys) == 1 and "alert" in user.ssh_keys[0]


def test_testbed_credentials_encrypted_and_deletable(config: Path) -> None:
    add_user(config, "fay@example.org", "fay-password")
    with webui_client(config) as b:
        b.login("fay@example.org", "fay-password")
        r = b.post(
            "/settings/credentials/g5k",
            {"login": "fay", "password": "g5k-secret-pw", "confirm": "g5k-secret-pw"},
            page="/settings",
        )
        assert r.status_code == 303
        b.post(
            "/settings/credentials/iotlab",
            {"login": "fay2", "password": "iot-pw", "confirm": "iot-pw"},
            page="/settings",
        )
        assert "fay" in b.get("/settings?tab=g5k").text
        user = db_user(config, "fay@example.org")
        assert (
            user is not None and user.g5k_user == "fay" and "g5k-secret-pw" not in (user.g5k_password or "")
        )
        fernet = crypto.load_fernet(load_webui_config(config).key_path)
        assert crypto.decrypt_str(fernet, user.g5k_password or "") == "g5k-secret-pw"
        b.post("/settings/credentials/g5k/delete", page="/settings")
    user = db_user(config, "fay@example.org")
    assert (
        user is not None and user.g5k_user == "" and user.g5k_password is None and user.iotlab_user == "fay2"
    )


def test_first_admin_and_cli(tmp_path: Path) -> None:
    cfg_path = write_webui_config(tmp_path / "fresh")
    cfg = load_webui_config(cfg_path)
    engine = make_engine(cfg.database_url)
    factory = session_factory(engine)
    first = ensure_first_admin(factory)
    assert first is not None and len(first.password) >= 16
    assert ensure_first_admin(factory) is None  # printed once, never again
    engine.dispose()
    with webui_client(cfg_path) as b:
        assert b.login(first.email, first.password).status_code == 303
    # gen-key never overwrites; create-admin reads the password from stdin, never from argv.
    key_before = cfg.key_path.read_bytes()
    out = subprocess.run(
        piseduce_cmd("webui", "gen-key", str(cfg_path)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "left unchanged" in out.stdout and cfg.key_path.read_bytes() == key_before
    out = subprocess.run(
        piseduce_cmd("webui", "create-admin", str(cfg_path), "--email", "ops@example.org"),
        env=subprocess_env(),
        input="ops-password-9\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "ops-password-9" not in out.stdout + out.stderr
    with webui_client(cfg_path) as b:
        assert b.login("ops@example.org", "ops-password-9").status_code == 303
        assert "(admin) Agents" in b.get("/reserve").text


def test_first_admin_password_goes_to_a_private_file_not_the_terminal(tmp_path: Path) -> None:
    """Under systemd the terminal is the journal: the password is written once to a 0600 file and
    only the file's path is printed."""
    cfg_path = write_webui_config(tmp_path / "fresh")
    cfg = load_webui_config(cfg_path)
    out = subprocess.run(piseduce_cmd("webui", "init-db", str(cfg_path)), env=subprocess_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path = cfg.base_dir / "first-admin-password"
    assert str(path) in out.stdout and "admin@piseduce.local" in out.stdout
    assert (path.stat().st_mode & 0o777) == 0o600
    password = path.read_text().strip()
    assert len(password) >= 16 and password not in out.stdout + out.stderr
    with webui_client(cfg_path) as b:
        assert b.login("admin@piseduce.local", password).status_code == 303
    # Once only: the next start has an admin, prints nothing of it and leaves the file alone.
    again = subprocess.run(piseduce_cmd("webui", "init-db", str(cfg_path)), env=subprocess_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "first-admin-password" not in again.stdout
    assert path.read_text().strip() == password


def test_security_headers_and_autoescape(config: Path) -> None:
    with webui_client(config) as b:
        r = b.get("/login")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        r = b.post("/login", {"email": "<b>x</b>@example.org", "password": "whatever1"})
        assert "<b>x</b>" not in r.text and "&lt;b&gt;x&lt;/b&gt;" in r.text
