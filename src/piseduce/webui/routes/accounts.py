"""Login, sign-up and logout."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce import crypto
from piseduce.webui import auth
from piseduce.webui.models import ROLE_USER, STATE_PENDING, User, utcnow
from piseduce.webui.web import begin_write, db_session, flash, form_str, optional_user, redirect, render

router = APIRouter()

LOGIN_FAILED = "Login failed: wrong email or password, or the account is not approved yet."


@router.get("/")
def home(user: User | None = Depends(optional_user)) -> Response:
    return RedirectResponse("/reserve" if user else "/login", status_code=303)


@router.get("/login")
def login_page(request: Request, user: User | None = Depends(optional_user)) -> Response:
    if user is not None:
        return redirect(request, "/reserve")
    return render(request, "login.html", {"email": ""})


@router.post("/login")
async def login(request: Request, db: Session = Depends(db_session)) -> Response:
    form = await request.form()
    email = auth.normalise_email(form_str(form, "email", 254))
    password = form_str(form, "password", auth.MAX_PASSWORD)
    client = request.client.host if request.client else "?"
    if not request.app.state.limiter.hit(f"ip:{client}", f"email:{email}"):
        return render(
            request,
            "login.html",
            {"email": email, "error": "Too many login attempts. Wait a minute and try again."},
            status=429,
        )
    user = auth.authenticate(db, email, password)
    if user is None:
        return render(request, "login.html", {"email": email, "error": LOGIN_FAILED}, status=401)
    begin_write(db)
    user.last_login = utcnow()
    db.commit()
    auth.login_session(request, user)
    return redirect(request, "/reserve")


@router.get("/signup")
def signup_page(request: Request) -> Response:
    return render(request, "signup.html", {"email": ""})


@router.post("/signup")
async def signup(request: Request, db: Session = Depends(db_session)) -> Response:
    form = await request.form()
    email = auth.normalise_email(form_str(form, "email", 300))
    password = form_str(form, "password", auth.MAX_PASSWORD + 1)
    error = auth.check_email(email) or auth.check_new_password(password, form_str(form, "confirm", 300))
    client = request.client.host if request.client else "?"
    if error is None and not request.app.state.limiter.hit(f"signup:{client}"):
        error = "Too many attempts. Wait a minute and try again."
    begin_write(db)
    if error is None and db.scalar(select(User.id).where(User.email == email)) is not None:
        error = "An account with this email already exists."
    if error is not None:
        return render(request, "signup.html", {"email": email, "error": error}, status=400)
    db.add(
        User(
            email=email,
            password_hash=crypto.hash_password(password),
            role=ROLE_USER,
            state=STATE_PENDING,
            ssh_keys=[],
        )
    )
    db.commit()
    flash(request, "Account created. An administrator must approve it before you can log in.", "ok")
    return redirect(request, "/login")


@router.post("/logout")
def logout(request: Request) -> Response:
    auth.logout_session(request)
    flash(request, "You are logged out.", "ok")
    return redirect(request, "/login")
