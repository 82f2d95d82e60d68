"""Settings > Notifications (each user: which events, by mail and/or webhook, the slot-end
warnings; the webhook's signing key shown once) and Admin > Notifications (the webhooks' allowed
hosts, the SMTP password, the outbox's state). Every change is a POST with the CSRF token."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from cryptography.fernet import Fernet
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from piseduce.webui import audit
from piseduce.webui.models import (
    OUTBOX_DROPPED,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    OUTBOX_SENT,
    OutboxMessage,
    User,
)
from piseduce.webui.notify import audited, store, webhook
from piseduce.webui.notify.kinds import LABELS, MAX_WARN_MINUTES, MAX_WARNINGS, Notice
from piseduce.webui.web import admin_user, current_user, database, flash, form_str, redirect, render

router = APIRouter()


@dataclass(frozen=True)
class Shown:
    """What the form's fields show: the stored choice, or after a refused form what was submitted
    (ticks included), so that fixing the one wrong field and saving again keeps the rest."""

    events: frozenset[Notice]
    email: bool
    webhook_url: str
    warn_minutes: str  # as typed: a refused "45, ten" comes back to be corrected

    @classmethod
    def of(cls, prefs: store.Prefs) -> Shown:
        return cls(prefs.events, prefs.email, prefs.webhook_url, ", ".join(map(str, prefs.warn_minutes)))


async def page(request: Request, user: User, *, error: str = "", new_secret: str = "",
               shown: Shown | None = None, status: int = 200) -> Response:
    uid = user.id
    prefs = await database(request).read(lambda s: store.load_prefs(s, uid))
    return render(request, "settings.html", {
        "tab": "notifications", "page": "settings", "keys": [], "entered": {"error": error},
        "prefs": prefs, "shown": shown or Shown.of(prefs), "labels": LABELS, "new_secret": new_secret,
        "mail_on": bool(request.app.state.cfg.smtp_host),
    }, status=status)


def parse_minutes(text: str) -> tuple[int, ...] | str:
    """'30, 5' -> (30, 5); a string says what is wrong."""
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= MAX_WARN_MINUTES:
            return f"Warnings: {part[:20]!r} is not a number of minutes from 1 to {MAX_WARN_MINUTES}."
        out.append(int(part))
    if len(set(out)) > MAX_WARNINGS:
        return f"Warnings: at most {MAX_WARNINGS} (such as 30, 5)."
    return tuple(sorted(set(out), reverse=True))


@router.post("/settings/notifications")
async def save(request: Request, user: User = Depends(current_user)) -> Response:
    form = await request.form()
    events = frozenset(n for n in Notice if form.get(f"event_{n.value}") == "on")
    email = form.get("email") == "on"
    url = form_str(form, "webhook_url", webhook.MAX_URL + 1).strip()
    minutes_text = form_str(form, "warn_minutes", 200)
    submitted = Shown(events, email, url, minutes_text)
    minutes = parse_minutes(minutes_text)
    if isinstance(minutes, str):
        return await page(request, user, error=minutes, shown=submitted, status=400)
    if url:
        hosts = await database(request).read(store.webhook_hosts)
        problem = webhook.check_url(url, hosts) or await webhook.check_target(url, hosts)
        if problem:
            return await page(request, user, error=f"Webhook URL: {problem}.", shown=submitted, status=400)
    uid, actor = user.id, audit.who(request, user)

    def change(s: Session) -> str:
        before = store.load_prefs(s, uid)
        store.save_prefs(s, uid, events=events, email=email, webhook_url=url, warn_minutes=minutes)
        secret = ""
        if url and not before.has_secret:
            secret = store.new_webhook_secret(s, request.app.state.fernet, uid)
        _record_channels(s, actor, uid, before, email, url, bool(secret))
        return secret

    secret = await database(request).write(change)
    if secret:
        return await page(request, user, new_secret=secret)
    flash(request, "Notification settings saved.", "ok")
    return redirect(request, "/settings?tab=notifications")


def _record_channels(
    s: Session, actor: audit.Who, uid: int, before: store.Prefs, email: bool, url: str, new_key: bool
) -> None:
    """The audit event of a change of channels, if there was one (in the change's transaction)."""
    detail = audited.channels_change(before, email=email, webhook_url=url, new_key=new_key)
    if detail is not None:
        audit.record(s, actor, "notify.channels", ("user", uid), detail)


@router.post("/settings/notifications/secret")
async def new_secret(request: Request, user: User = Depends(current_user)) -> Response:
    uid, actor = user.id, audit.who(request, user)
    fernet = request.app.state.fernet

    def change(s: Session) -> str:
        secret = store.new_webhook_secret(s, fernet, uid)
        audit.record(s, actor, "notify.webhook_key", ("user", uid), audited.new_key())
        return secret

    secret = await database(request).write(change)
    return await page(request, user, new_secret=secret)


# ---------------------------------------------------------------- admin


def _counts(s: Session) -> dict[str, int]:
    rows = s.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)).all()
    got = {str(state): int(n) for state, n in rows}
    # Keyed for the template by what it says (the states' stored names differ: "given_up").
    names = {
        "waiting": OUTBOX_PENDING, "sent": OUTBOX_SENT, "given_up": OUTBOX_FAILED, "dropped": OUTBOX_DROPPED,
    }
    return {name: got.get(state, 0) for name, state in names.items()}


def _failures(s: Session) -> list[OutboxMessage]:
    return list(s.scalars(select(OutboxMessage).where(OutboxMessage.last_error != "")
                          .order_by(OutboxMessage.id.desc()).limit(20)))


async def admin_page(request: Request, *, error: str = "", status: int = 200) -> Response:
    db = database(request)
    hosts = await db.read(store.webhook_hosts)
    counts = await db.read(_counts)
    failures = await db.read(_failures)
    has_password = await db.read(lambda s: bool(store.smtp_password(s, request.app.state.fernet)))
    return render(request, "admin_notifications.html", {
        "page": "admin_notifications", "hosts": hosts, "counts": counts, "failures": failures,
        "cfg": request.app.state.cfg, "has_password": has_password, "error": error,
    }, status=status)


@router.get("/admin/notifications")
async def admin_view(request: Request, _me: User = Depends(admin_user)) -> Response:
    return await admin_page(request)


def parse_hosts(text: str) -> list[str] | str:
    out = []
    for item in text.replace(",", "\n").split():
        host = item.strip().lower()
        bare = host.removeprefix("*.")
        if not bare or len(host) > 253 or not all(c.isalnum() or c in ".-:[]" for c in bare):
            return f"Allowed hosts: {item[:60]!r} is not a host name or address (such as hooks.example.org)."
        out.append(host)
    return sorted(set(out))


def _set_hosts(actor: audit.Who, hosts: list[str], s: Session) -> None:
    """Save the allowed hosts and audit the change (before -> after), in one transaction."""
    detail = audited.hosts_change(store.webhook_hosts(s), hosts)
    store.set_webhook_hosts(s, hosts)
    if detail is not None:
        audit.record(s, actor, "notify.hosts", ("setting", store.WEBHOOK_HOSTS), detail)


def _set_smtp_password(actor: audit.Who, fernet: Fernet, password: str, s: Session) -> None:
    """Save (or clear) the SMTP password and audit that it was, never what it is."""
    detail = audited.smtp_password_change(bool(store.smtp_password(s, fernet)), password)
    store.set_smtp_password(s, fernet, password)
    if detail is not None:
        audit.record(s, actor, "notify.smtp_password", ("setting", store.SMTP_PASSWORD), detail)


@router.post("/admin/notifications/hosts")
async def save_hosts(request: Request, me: User = Depends(admin_user)) -> Response:
    form = await request.form()
    hosts = parse_hosts(form_str(form, "hosts", 20_000))
    if isinstance(hosts, str):
        return await admin_page(request, error=hosts, status=400)
    await database(request).write(partial(_set_hosts, audit.who(request, me), hosts))
    flash(request, f"Webhooks' allowed hosts saved ({len(hosts) or 'none: any public host'}).", "ok")
    return redirect(request, "/admin/notifications")


@router.post("/admin/notifications/smtp-password")
async def save_smtp_password(request: Request, me: User = Depends(admin_user)) -> Response:
    form = await request.form()
    password = form_str(form, "password", 1024)
    fernet = request.app.state.fernet
    await database(request).write(partial(_set_smtp_password, audit.who(request, me), fernet, password))
    flash(request, "SMTP password saved (encrypted)." if password else "SMTP password removed.", "ok")
    return redirect(request, "/admin/notifications")
