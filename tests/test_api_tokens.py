"""Personal access tokens of the users' API: created in Settings (shown once, stored hashed), sent
as `Authorization: Bearer`, scoped, revocable, expiring; the browser's session on the API with
its CSRF header; wrong tokens counted by the login limiter. No agent is needed here."""

from __future__ import annotations

import datetime as dt
import html
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.api_helpers import API, bearer, expire_tokens, make_token, set_user_state
from helpers.webui_fixtures import (
    Browser,
    add_user,
    csrf_of,
    webui_client,
    write_webui_config,
)

pytestmark = pytest.mark.usefixtures("fast_argon2")
ALICE, BOB = "alice@example.org", "bob@example.org"
SECRET_RE = re.compile(r'id="token-secret">(pst_[A-Za-z0-9_-]{43})<')


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, ALICE, "alice-password")
    add_user(cfg, BOB, "bob-password")
    return cfg


@pytest.fixture
def browser(config: Path) -> Iterator[Browser]:
    with webui_client(config) as b:
        yield b


def create_in_settings(b: Browser, name: str, scope: str, days: str = "") -> str:
    r = b.post("/settings/tokens", {"name": name, "scope": scope, "days": days}, page="/settings?tab=tokens")
    assert r.status_code == 200, r.text
    m = SECRET_RE.search(r.text)
    assert m, "the new token's secret is not on the page"
    return m.group(1)


def test_a_token_made_in_settings_is_shown_once_stored_hashed_and_revoked_on_the_next_request(
    browser: Browser, config: Path
) -> None:
    assert browser.login(ALICE, "alice-password").status_code == 303
    secret = create_in_settings(browser, "laptop", "write", "30")
    # Shown once: the list page afterwards names it, never shows the secret again.
    listing = browser.get("/settings?tab=tokens").text
    assert "laptop" in listing and secret not in listing and secret[:16] not in listing
    # At rest: neither the secret nor anything that logs in with it (its SHA-256 only).
    raw = (config.parent / "webui.db").read_bytes()
    assert secret.encode() not in raw
    me = browser.c.get(f"{API}/me", headers=bearer(secret), cookies={})
    assert me.status_code == 200, me.text
    assert me.json() == {"email": ALICE, "role": "user", "zone": None, "via": "token", "scope": "write"}
    # The last use is recorded and listed.
    rows = sqlite3.connect(config.parent / "webui.db").execute("SELECT last_used FROM api_tokens").fetchall()
    assert rows[0][0] is not None
    token_id = re.search(r'action="/settings/tokens/(\d+)/revoke"', listing)
    assert token_id
    r = browser.post(f"/settings/tokens/{token_id.group(1)}/revoke", page="/settings?tab=tokens")
    assert r.status_code == 303
    again = browser.c.get(f"{API}/me", headers=bearer(secret))
    assert again.status_code == 401
    assert again.headers["www-authenticate"].startswith("Bearer")
    assert isinstance(again.json()["detail"], str)


def test_settings_refuses_bad_token_requests_in_words_and_without_csrf(browser: Browser) -> None:
    browser.login(ALICE, "alice-password")
    for data, words in (
        ({"name": "", "scope": "read", "days": ""}, "Name the token"),
        ({"name": "x" * 65, "scope": "read", "days": ""}, "Name the token"),
        ({"name": "ok", "scope": "admin", "days": ""}, "The scope is"),
        ({"name": "ok", "scope": "read", "days": "1_0"}, "Expiry (days)"),
        ({"name": "ok", "scope": "read", "days": "0"}, "Expiry (days)"),
        ({"name": "ok", "scope": "read", "days": "99999"}, "Expiry (days)"),
    ):
        r = browser.post("/settings/tokens", data, page="/settings?tab=tokens")
        assert r.status_code == 400, data
        assert words in html.unescape(r.text), data
        assert "token-secret" not in r.text
    r = browser.post("/settings/tokens", {"name": "ok", "scope": "read"}, csrf=False)
    assert r.status_code == 403
    assert "No token yet" in browser.get("/settings?tab=tokens").text


def test_one_user_cannot_revoke_another_users_token(browser: Browser, config: Path) -> None:
    bob_secret = make_token(config, BOB, "read")
    browser.login(ALICE, "alice-password")
    for token_id in range(1, 4):
        browser.post(f"/settings/tokens/{token_id}/revoke", page="/settings?tab=tokens")
    assert browser.c.get(f"{API}/me", headers=bearer(bob_secret)).json()["email"] == BOB


def test_read_scope_cannot_act(browser: Browser, config: Path) -> None:
    secret = make_token(config, ALICE, "read")
    assert browser.c.get(f"{API}/reservations", headers=bearer(secret)).status_code == 200
    for method, path, body in (
        ("POST", "/reservations", {"count": 1, "hours": 1}),
        ("POST", "/ssh-keys", {"keys": "ssh-ed25519 AAAA"}),
        ("PUT", "/credentials/g5k", {"login": "a", "password": "b"}),
        ("POST", "/reservations/site/1/release", None),
    ):
        r = browser.c.request(method, f"{API}{path}", json=body, headers=bearer(secret))
        assert r.status_code == 403, (path, r.text)
        assert "read-only" in r.json()["detail"]


def test_expired_unknown_malformed_and_disabled_account_tokens_are_401(
    browser: Browser, config: Path
) -> None:
    secret = make_token(config, ALICE, "write", days=1)
    assert browser.c.get(f"{API}/me", headers=bearer(secret)).status_code == 200
    expire_tokens(config, ALICE, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert browser.c.get(f"{API}/me", headers=bearer(secret)).status_code == 401
    other = make_token(config, ALICE, "write")
    forged = other[:16] + ("A" if other[16] != "A" else "B") + other[17:]  # right prefix, wrong secret
    for header in (f"Bearer {forged}", "Bearer pst_short", "Bearer " + "x" * 5000, "Basic abc", "Bearer "):
        r = browser.c.get(f"{API}/me", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert browser.c.get(f"{API}/me", headers=bearer(other)).status_code == 200
    set_user_state(config, ALICE, "revoked")
    assert browser.c.get(f"{API}/me", headers=bearer(other)).status_code == 401
    set_user_state(config, ALICE, "pending")
    assert browser.c.get(f"{API}/me", headers=bearer(other)).status_code == 401


def test_a_token_never_opens_a_page(browser: Browser, config: Path) -> None:
    secret = make_token(config, ALICE, "write")
    for page in ("/reserve", "/manage", "/settings", "/configure"):
        r = browser.c.get(page, headers=bearer(secret), follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", page


def test_the_session_works_on_the_api_with_the_csrf_header_on_changes(browser: Browser) -> None:
    assert browser.c.get(f"{API}/me").status_code == 401  # nobody signed in
    browser.login(ALICE, "alice-password")
    me = browser.c.get(f"{API}/me")
    assert me.status_code == 200 and me.json()["via"] == "session"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"
    r = browser.c.post(f"{API}/ssh-keys", json={"keys": key})
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
    r = browser.c.post(f"{API}/ssh-keys", json={"keys": key}, headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403
    token = csrf_of(browser.get("/settings?tab=ssh").text)
    r = browser.c.post(f"{API}/ssh-keys", json={"keys": key}, headers={"X-CSRF-Token": token})
    assert r.status_code == 201, r.text
    assert [k["comment"] for k in r.json()] == ["alice@laptop"]
    assert "alice@laptop" in browser.get("/settings?tab=ssh").text  # the same account, the same keys


def test_a_flood_of_wrong_tokens_is_429_with_retry_after(config: Path) -> None:
    good = make_token(config, ALICE, "read")
    with webui_client(config, client=("203.0.113.9", 40000)) as attacker:
        wrong = bearer("pst_" + "A" * 43)
        codes = [attacker.c.get(f"{API}/me", headers=wrong).status_code for _ in range(40)]
        assert codes[0] == 401
        assert 429 in codes
        r = attacker.c.get(f"{API}/me", headers=bearer("pst_" + "B" * 43))
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert "Wait" in r.json()["detail"]
    # Another address is not slowed down by it.
    with webui_client(config, client=("198.51.100.7", 40000)) as other:
        assert other.c.get(f"{API}/me", headers=bearer(good)).status_code == 200


def test_errors_are_one_sentence_json(browser: Browser, config: Path) -> None:
    secret = make_token(config, ALICE, "write")
    for method, path, body in (
        ("GET", "/nodes?filter=memory>>4", None),
        ("GET", "/reservations?status=bogus", None),
        ("POST", "/reservations", {"count": "1_0", "hours": 1}),
        ("POST", "/reservations", {"count": 1, "hours": "nan"}),
        ("POST", "/reservations", {"count": 1, "hours": 1, "bin": "x" * 65}),
        ("POST", "/reservations", {"nodes": [], "hours": 1}),
        ("GET", "/reservations/site/abc", None),
        ("GET", "/schedule?start=yesterday", None),
    ):
        r = browser.c.request(method, f"{API}{path}", json=body, headers=bearer(secret))
        assert r.status_code == 422, (path, body, r.text)
        assert isinstance(r.json()["detail"], str), r.text
    assert browser.c.get(f"{API}/nowhere", headers=bearer(secret)).status_code == 404


def test_the_spec_and_the_docs_are_served_locally(browser: Browser) -> None:
    spec = browser.c.get(f"{API}/openapi.json").json()
    assert spec["info"]["title"] == "PiSeduce API"
    assert "/reservations" in spec["paths"] and "/nodes" in spec["paths"]
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    docs = browser.c.get(f"{API}/docs")
    assert docs.status_code == 200
    assert "http" not in re.sub(r'href="/|src="/', "", docs.text.split("<body>")[1])  # nothing from elsewhere
    assert "<script>" not in docs.text  # no inline script: the pages' CSP holds
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert browser.c.get(f"{API}/docs/assets/{asset}").status_code == 200


def test_a_body_over_the_limit_is_413_json_before_it_is_read(browser: Browser, config: Path) -> None:
    secret = make_token(config, ALICE, "write")
    big = {"keys": "ssh-ed25519 " + "A" * (2 << 20)}
    r = browser.c.post(f"{API}/ssh-keys", json=big, headers=bearer(secret))
    assert r.status_code == 413
    assert "KiB" in r.json()["detail"]
    page = browser.c.post("/settings/ssh-keys", data={"keys": "A" * (2 << 20)})
    assert page.status_code == 413 and page.headers["content-type"].startswith("text/plain")


def test_an_admin_revoking_an_account_ends_its_tokens_for_good(config: Path) -> None:
    """Revoking an account (Admin -> Users) ends its sessions for good; its tokens too: approving
    the account again later does not bring back a token that may have leaked."""
    from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD

    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    secret = make_token(config, ALICE, "write")
    with webui_client(config) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        assert admin.c.get(f"{API}/me", headers=bearer(secret)).status_code == 200
        alice_id = sqlite3.connect(config.parent / "webui.db").execute(
            "SELECT id FROM users WHERE email = ?", (ALICE,)).fetchone()[0]
        for action in ("revoke", "approve"):
            r = admin.post(f"/admin/users/{alice_id}/{action}", page="/admin/users")
            assert r.status_code in (200, 303), r.text[-500:]
        assert admin.c.get(f"{API}/me", headers=bearer(secret)).status_code == 401
        fresh = make_token(config, ALICE, "write")  # a new one made after works
        assert admin.c.get(f"{API}/me", headers=bearer(fresh)).status_code == 200


def test_a_405_of_the_api_lists_the_allowed_methods(browser: Browser) -> None:
    """The API is an app mounted in the web UI: its 405s named no method (an empty Allow)."""
    for method, path, allowed in [
        ("PATCH", f"{API}/reservations", {"GET", "POST"}),
        ("GET", f"{API}/reservations/lab/1/destroy", {"POST"}),
        ("DELETE", f"{API}/me", {"GET"}),
    ]:
        r = browser.c.request(method, path)
        assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}, (path, r.text)
        named = set(r.headers["allow"].split(", "))
        assert named >= allowed and method not in named, (path, r.headers["allow"])
