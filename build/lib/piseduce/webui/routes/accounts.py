"""Login, sign-up and logout.

Every database call goes through the web UI's `Database` (threads, one transaction each) and
every password hash through `auth`'s own pool: nothing here waits on the event loop.
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from piseduce import crypto
from piseduce.webui import audit, auth, throttle
from piseduce.webui.models import ROLE_USER, STATE_PENDING, User, utcnow
from piseduce.webui.throttle import Key, Limiter
from piseduce.webui.web import database, flash, form_str, optional_user, redirect, render

router = APIRouter()

# One answer to every valid sign-up, whether the address has an account or not (OWASP:
# a sign-up form must not enumerate accounts); an existing account is left as it was.
SIGNED_UP = (
    "Sign-up received: an administrator must approve a new account before you can log in. "
    "An email that has an account keeps it unchanged: log in with its password, or ask an "
    "administrator to reset it."
)
LOGIN_FAILED = "Login failed: wrong email or password, or the account is not approved yet."


def _limiter(request: Request) -> Limiter:
    limiter: Limiter = request.app.state.limiter
    return limiter


def source(request: Request) -> str:
    """The client's address as the limiter counts it (trusted proxies resolved)."""
    return str(request.app.state.client_addr.of(request))


def login_keys(email: str, src: str, device: str | None) -> tuple[list[Key], list[Key], list[Key]]:
    """(counted, forgotten on success, forgiven on success) for a login try. A browser with this
    account's device cookie is counted under its cookie only (throttle.py)."""
    if device is not None:
        device_key = Key("device", device)
        return [device_key], [device_key], []
    pair = Key("account+source", f"{email}\0{src}")
    src_key, account = Key("source", src), Key("account", email)
    return [pair, src_key, account], [pair], [src_key, account]


def _too_many(page: Response, refusal: throttle.Refusal) -> Response:
    """A 429 page says the wait in words; its Retry-After says it to scripts and proxies."""
    page.headers["Retry-After"] = refusal.retry_after
    return page


@router.get("/")
async def home(user: User | None = Depends(optional_user)) -> Response:
    return RedirectResponse("/reserve" if user else "/login", status_code=303)


@router.get("/login")
async def login_page(request: Request, user: User | None = Depends(optional_user)) -> Response:
    if user is not None:
        return redirect(request, "/reserve")
    return render(request, "login.html", {"email": ""})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    email = auth.normalise_email(form_str(form, "email", 254))
    password = form_str(form, "password", auth.MAX_PASSWORD)
    secret: str = request.app.state.secret
    device = throttle.device_nonce(secret, email, request.cookies.get(throttle.DEVICE_COOKIE))
    counted, forget, forgive = login_keys(email, source(request), device)
    db, limiter = database(request), _limiter(request)
    refusal = await db.write(lambda s: limiter.attempt(s, counted, utcnow()))
    if refusal is not None:
        return _too_many(
            render(request, "login.html", {"email": email, "error": refusal.message}, status=429), refusal
        )
    user = await db.read(lambda s: auth.find_user(s, email))
    ok = await auth.check_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        tried = "" if auth.check_email(email) else email  # never a password typed in the wrong box
        await audit.record_now(db, audit.who(request, email=tried), "login.failed")
        return render(request, "login.html", {"email": email, "error": LOGIN_FAILED}, status=401)
    rehashed = await auth.new_hash(password) if crypto.needs_rehash(user.password_hash) else None
    uid, actor = user.id, audit.who(request, user)

    def logged_in(s: Session) -> None:
        limiter.succeeded(s, forget, forgive)
        audit.record(s, actor, "login", ("user", uid))
        row = s.get(User, uid)
        if row is not None:
            row.last_login = utcnow()
            if rehashed is not None:
                row.password_hash = rehashed

    await db.write(logged_in)
    auth.login_session(request, user)
    response = redirect(request, "/reserve")
    if device is None:  # this browser is now known to the account (OWASP device cookie)
        response.set_cookie(
            throttle.DEVICE_COOKIE,
            throttle.device_cookie(secret, email),
            max_age=throttle.DEVICE_MAX_AGE,
            httponly=True,
            samesite="lax",
            secure=request.app.state.secure_cookies,
        )
    return response


@router.get("/signup")
async def signup_page(request: Request) -> Response:
    return render(request, "signup.html", {"email": ""})


@router.post("/signup")
async def signup(request: Request) -> Response:
    form = await request.form()
    email = auth.normalise_email(form_str(form, "email", 300))
    password = form_str(form, "password", auth.MAX_PASSWORD + 1)
    error = auth.check_email(email) or auth.check_new_password(password, form_str(form, "confirm", 300))
    db, limiter = database(request), _limiter(request)
    if error is None:
        key = Key("signup", source(request))
        refusal = await db.write(lambda s: limiter.attempt(s, [key], utcnow()))
        if refusal is not None:
            page = render(request, "signup.html", {"email": email, "error": refusal.message}, status=429)
            return _too_many(page, refusal)
    if error is not None:
        return render(request, "signup.html", {"email": email, "error": error}, status=400)
    # Hashed whether or not the account exists, so that both answers take as long.
    password_hash = await auth.new_hash(password)
    actor = audit.who(request, email=email)

    def create(s: Session) -> None:
        uid, action = s.scalar(select(User.id).where(User.email == email)), "signup.existing"
        if uid is None:
            row = User(
                email=email, password_hash=password_hash, role=ROLE_USER, state=STATE_PENDING, ssh_keys=[]
            )
            s.add(row)
            s.flush()  # its id, for the audit trail
            uid, action = row.id, "signup"
        audit.record(s, actor, action, ("user", uid))

    with contextlib.suppress(IntegrityError):  # the same address signed up at the same moment
        await db.write(create)
    flash(request, SIGNED_UP, "ok")
    return redirect(request, "/login")


@router.post("/logout")
async def logout(request: Request) -> Response:
    auth.logout_session(request)
    flash(request, "You are logged out.", "ok")
    return redirect(request, "/login")
