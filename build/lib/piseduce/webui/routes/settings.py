"""Settings: password, SSH public keys, Grid'5000 and IoT-LAB credentials."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from piseduce import crypto
from piseduce.sshkeys import PublicKey, parse_key, parse_keys
from piseduce.webui import audit, auth
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.credentials_check import check_credentials
from piseduce.webui.models import User, utcnow
from piseduce.webui.routes import calendar_feed, settings_notify, settings_tokens
from piseduce.webui.sessions import end_user_sessions
from piseduce.webui.throttle import Key, Limiter
from piseduce.webui.web import (
    current_user,
    database,
    flash,
    form_str,
    identity,
    redirect,
    render,
)

router = APIRouter(prefix="/settings")

TABS = ("account", "password", "ssh", "g5k", "iotlab", "tokens", "calendar", "notifications")
CRED_TYPES = {
    "g5k": ("Grid'5000", "g5k_user", "g5k_password"),
    "iotlab": ("IoT-LAB", "iotlab_user", "iotlab_password"),
}
MAX_KEYS = 32


def key_list(user: User) -> list[dict[str, str]]:
    out = []
    for line in user.ssh_keys or []:
        try:
            key = parse_key(line)
        except ValueError:
            continue
        out.append(
            {"kind": key.kind, "fingerprint": key.fingerprint, "comment": key.comment, "line": key.line}
        )
    return out


def _page(request: Request, user: User, tab: str, *, status: int = 200, **entered: str) -> Response:
    """The page; after a refusal, `error` says why and the fields keep what was entered
    (`keys_text`, `login`), passwords excepted (never written back in a page)."""
    return render(
        request,
        "settings.html",
        {
            "tab": tab if tab in TABS else "account",
            "keys": key_list(user),
            "page": "settings",
            "entered": entered,
        },
        status=status,
    )


@router.get("")
async def settings_page(
    request: Request, tab: str = "account", user: User = Depends(current_user)
) -> Response:
    if tab == "tokens":
        return await settings_tokens.page(request, user)
    if tab == "calendar":
        return await calendar_feed.page(request, user)
    if tab == "notifications":
        return await settings_notify.page(request, user)
    return _page(request, user, tab)


@router.post("/password")
async def change_password(request: Request, user: User = Depends(current_user)) -> Response:
    """A new password, once the current one is given (a wrong one counts like a failed login:
    throttle.py). Every session of the account ends; this browser gets a new one."""
    form = await request.form()
    current = form_str(form, "current", auth.MAX_PASSWORD)
    new = form_str(form, "password", auth.MAX_PASSWORD + 1)
    db, limiter = database(request), _limiter(request)
    key = Key("current-password", str(user.id))
    refusal = await db.write(lambda s: limiter.attempt(s, [key], utcnow()))
    if refusal is not None:
        flash(request, refusal.message, "error")
        return redirect(request, "/settings?tab=password")
    if not await auth.check_password(user.password_hash, current):
        flash(request, "The current password is wrong.", "error")
        return redirect(request, "/settings?tab=password")
    error = auth.check_new_password(new, form_str(form, "confirm", auth.MAX_PASSWORD + 1))
    new_hash = None if error else await auth.new_hash(new)
    uid, actor = user.id, audit.who(request, user)

    def change(s: Session) -> None:
        limiter.succeeded(s, [key])
        row = s.get(User, uid)
        if new_hash is not None and row is not None:
            row.password_hash = new_hash
            end_user_sessions(s, uid)
            audit.record(s, actor, "password.change", ("user", uid))

    await db.write(change)
    if error:
        flash(request, error, "error")
        return redirect(request, "/settings?tab=password")
    auth.login_session(request, user)  # this browser stays logged in, with a new session
    flash(request, "Password changed. Your other sessions are logged out.", "ok")
    return redirect(request, "/settings?tab=password")


def _limiter(request: Request) -> Limiter:
    limiter: Limiter = request.app.state.limiter
    return limiter


def merge_keys(s: Session, uid: int, keys: list[PublicKey]) -> int | str:
    """Add the keys the account does not have yet: how many were added, or why none was."""
    row = s.get(User, uid)
    if row is None:
        return "The account no longer exists."
    current = list(row.ssh_keys or [])
    known = {parse_key(k).blob for k in current if _valid(k)}
    added = 0
    for key in keys:
        if key.blob not in known:
            current.append(key.line)
            known.add(key.blob)
            added += 1
    if len(current) > MAX_KEYS:
        return f"At most {MAX_KEYS} keys per account."
    row.ssh_keys = current
    return added


@router.post("/ssh-keys")
async def add_keys(request: Request, user: User = Depends(current_user)) -> Response:
    form = await request.form()
    text = form_str(form, "keys", 64 * 1024)
    try:
        keys = parse_keys(text)
    except ValueError as exc:
        return _page(request, user, "ssh", status=400, error=f"SSH key refused: {exc}", keys_text=text)
    uid = user.id
    adding = audit.then(lambda s: merge_keys(s, uid, keys), audit.who(request, user), "ssh_key.add",
                        audit.keys_added(uid))
    added = await database(request).write(adding)
    if isinstance(added, str):
        return _page(request, user, "ssh", status=400, error=added, keys_text=text)
    flash(request, f"{added} key(s) added." if added else "These keys were already there.", "ok")
    return redirect(request, "/settings?tab=ssh")


def _valid(line: str) -> bool:
    try:
        parse_key(line)
    except ValueError:
        return False
    return True


def drop_key(s: Session, uid: int, fingerprint: str) -> bool:
    """Delete the account's key of this fingerprint; whether there was one."""
    row = s.get(User, uid)
    if row is None:
        return False
    kept = [k for k in row.ssh_keys or [] if not (_valid(k) and parse_key(k).fingerprint == fingerprint)]
    if len(kept) == len(row.ssh_keys or []):
        return False
    row.ssh_keys = kept
    return True


@router.post("/ssh-keys/delete")
async def delete_key(request: Request, user: User = Depends(current_user)) -> Response:
    form = await request.form()
    fingerprint = form_str(form, "fingerprint", 100)
    uid = user.id
    removal = audit.then(lambda s: drop_key(s, uid, fingerprint), audit.who(request, user), "ssh_key.remove",
                         audit.key_removed(uid, fingerprint))
    if await database(request).write(removal):
        flash(request, f"Key {fingerprint} deleted.", "ok")
    else:
        flash(request, "No such key.", "error")
    return redirect(request, "/settings?tab=ssh")


def save_credentials(s: Session, uid: int, kind: str, login: str, sealed: str | None) -> bool:
    """Store (or with `sealed` None, forget) the account's testbed login; False without an account."""
    _label, user_attr, pwd_attr = CRED_TYPES[kind]
    row = s.get(User, uid)
    if row is None:
        return False
    setattr(row, user_attr, login)
    setattr(row, pwd_attr, sealed)
    return True


@router.post("/credentials/{kind}")
async def set_credentials(
    kind: str, request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    """Check the login with the testbed (through an agent of that type), then save it; a login the
    testbed refused is not saved and the form comes back with the reason."""
    if kind not in CRED_TYPES:
        return Response("unknown credential type", status_code=404)
    label, user_attr, pwd_attr = CRED_TYPES[kind]
    form = await request.form()
    login = form_str(form, "login", 200).strip()
    password = form_str(form, "password", 1025)
    error = None
    if not login or len(login) > 128 or any(c.isspace() for c in login):
        error = f"Enter your {label} username (no spaces)."
    elif not password or len(password) > 1024:
        error = f"Enter your {label} password."
    elif password != form_str(form, "confirm", 1025):
        error = "The two passwords differ."
    if error:
        return _page(request, user, kind, status=400, error=error, login=login[:128])
    # Asked before the write transaction: a testbed's answer never holds the database.
    verdict = await check_credentials(h, user.email, user.role, kind, login, password)
    if verdict.outcome == "refused":
        return _page(
            request,
            user,
            kind,
            status=400,
            error=f"{verdict.message}: nothing was saved. Check the username and the password, "
            "then save again.",
            login=login,
        )
    sealed = crypto.encrypt_str(request.app.state.fernet, password)
    uid = user.id
    saving = audit.then(lambda s: save_credentials(s, uid, kind, login, sealed), audit.who(request, user),
                        "credentials.set", audit.credentials_of(uid, kind, login))
    if not await database(request).write(saving):
        return redirect(request, "/login")
    if verdict.outcome == "valid":
        flash(request, f"{label} credentials saved and checked: {verdict.message}.", "ok")
    else:
        flash(
            request,
            f"{label} credentials saved (encrypted) but {verdict.message}. They are checked again when you "
            f"reserve {label} nodes; 'Check them now' asks again.",
            "warning",
        )
    return redirect(request, f"/settings?tab={kind}")


@router.post("/credentials/{kind}/check")
async def recheck_credentials(
    kind: str, request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    """Ask the testbed again whether the saved credentials work (nothing changes)."""
    if kind not in CRED_TYPES:
        return Response("unknown credential type", status_code=404)
    label, _, _ = CRED_TYPES[kind]
    creds = identity(request, user).credentials.get(kind)
    if creds is None:
        flash(request, f"No {label} credentials saved (or unreadable with this key file): enter them again.",
              "error")
        return redirect(request, f"/settings?tab={kind}")
    verdict = await check_credentials(
        h, user.email, user.role, kind, creds["user"], creds["password"]
    )
    kinds = {"valid": "ok", "refused": "error", "unchecked": "warning"}
    words = {"valid": "they work", "refused": "they do not work", "unchecked": "unknown"}
    text = f"{label} credentials: {words[verdict.outcome]}: {verdict.message}."
    flash(request, text, kinds[verdict.outcome])
    return redirect(request, f"/settings?tab={kind}")


@router.post("/credentials/{kind}/delete")
async def delete_credentials(kind: str, request: Request, user: User = Depends(current_user)) -> Response:
    if kind not in CRED_TYPES:
        return Response("unknown credential type", status_code=404)
    label, user_attr, pwd_attr = CRED_TYPES[kind]
    uid, actor = user.id, audit.who(request, user)

    def forget(s: Session) -> None:
        row = s.get(User, uid)
        if row is not None:
            setattr(row, user_attr, "")
            setattr(row, pwd_attr, None)
            audit.record(s, actor, "credentials.delete", ("user", uid), {"kind": kind})

    await database(request).write(forget)
    flash(request, f"{label} credentials deleted.", "ok")
    return redirect(request, f"/settings?tab={kind}")
