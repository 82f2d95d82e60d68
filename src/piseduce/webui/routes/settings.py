"""Settings: password, SSH public keys, Grid'5000 and IoT-LAB credentials."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from piseduce import crypto
from piseduce.sshkeys import parse_key, parse_keys
from piseduce.webui import auth
from piseduce.webui.models import User
from piseduce.webui.web import begin_write, current_user, db_session, flash, form_str, redirect, render

router = APIRouter(prefix="/settings")

TABS = ("account", "password", "ssh", "g5k", "iotlab")
CRED_TYPES = {
    "g5k": ("Grid'5000", "g5k_user", "g5k_password"),
    "iotlab": ("IoT-LAB", "iotlab_user", "iotlab_password"),
}
MAX_KEYS = 32


def _keys(user: User) -> list[dict[str, str]]:
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


@router.get("")
def settings_page(request: Request, tab: str = "account", user: User = Depends(current_user)) -> Response:
    return render(
        request,
        "settings.html",
        {
            "tab": tab if tab in TABS else "account",
            "keys": _keys(user),
            "page": "settings",
        },
    )


@router.post("/password")
async def change_password(
    request: Request, user: User = Depends(current_user), db: Session = Depends(db_session)
) -> Response:
    form = await request.form()
    begin_write(db)
    current = form_str(form, "current", auth.MAX_PASSWORD)
    new = form_str(form, "password", auth.MAX_PASSWORD + 1)
    if not crypto.verify_password(user.password_hash, current):
        error: str | None = "The current password is wrong."
    else:
        error = auth.check_new_password(new, form_str(form, "confirm", auth.MAX_PASSWORD + 1))
    if error:
        flash(request, error, "error")
        return redirect(request, "/settings?tab=password")
    user.password_hash = crypto.hash_password(new)
    db.commit()
    auth.login_session(request, user)  # this session stays valid; every other one ends
    flash(request, "Password changed. Your other sessions are logged out.", "ok")
    return redirect(request, "/settings?tab=password")


@router.post("/ssh-keys")
async def add_keys(
    request: Request, user: User = Depends(current_user), db: Session = Depends(db_session)
) -> Response:
    form = await request.form()
    begin_write(db)
    try:
        keys = parse_keys(form_str(form, "keys", 64 * 1024))
    except ValueError as exc:
        flash(request, f"SSH key refused: {exc}", "error")
        return redirect(request, "/settings?tab=ssh")
    current = list(user.ssh_keys or [])
    known = {parse_key(k).blob for k in current if _valid(k)}
    added = 0
    for key in keys:
        if key.blob not in known:
            current.append(key.line)
            known.add(key.blob)
            added += 1
    if len(current) > MAX_KEYS:
        flash(request, f"At most {MAX_KEYS} keys per account.", "error")
        return redirect(request, "/settings?tab=ssh")
    user.ssh_keys = current
    db.commit()
    flash(request, f"{added} key(s) added." if added else "These keys were already there.", "ok")
    return redirect(request, "/settings?tab=ssh")


def _valid(line: str) -> bool:
    try:
        parse_key(line)
    except ValueError:
        return False
    return True


@router.post("/ssh-keys/delete")
async def delete_key(
    request: Request, user: User = Depends(current_user), db: Session = Depends(db_session)
) -> Response:
    form = await request.form()
    begin_write(db)
    fingerprint = form_str(form, "fingerprint", 100)
    kept = [k for k in user.ssh_keys or [] if not (_valid(k) and parse_key(k).fingerprint == fingerprint)]
    if len(kept) == len(user.ssh_keys or []):
        flash(request, "No such key.", "error")
    else:
        user.ssh_keys = kept
        db.commit()
        flash(request, f"Key {fingerprint} deleted.", "ok")
    return redirect(request, "/settings?tab=ssh")


@router.post("/credentials/{kind}")
async def set_credentials(
    kind: str, request: Request, user: User = Depends(current_user), db: Session = Depends(db_session)
) -> Response:
    if kind not in CRED_TYPES:
        return Response("unknown credential type", status_code=404)
    label, user_attr, pwd_attr = CRED_TYPES[kind]
    form = await request.form()
    begin_write(db)
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
        flash(request, error, "error")
        return redirect(request, f"/settings?tab={kind}")
    setattr(user, user_attr, login)
    setattr(user, pwd_attr, crypto.encrypt_str(request.app.state.fernet, password))
    db.commit()
    flash(request, f"{label} credentials saved (the password is stored encrypted).", "ok")
    return redirect(request, f"/settings?tab={kind}")


@router.post("/credentials/{kind}/delete")
def delete_credentials(
    kind: str, request: Request, user: User = Depends(current_user), db: Session = Depends(db_session)
) -> Response:
    if kind not in CRED_TYPES:
        return Response("unknown credential type", status_code=404)
    label, user_attr, pwd_attr = CRED_TYPES[kind]
    begin_write(db)
    setattr(user, user_attr, "")
    setattr(user, pwd_attr, None)
    db.commit()
    flash(request, f"{label} credentials deleted.", "ok")
    return redirect(request, f"/settings?tab={kind}")
