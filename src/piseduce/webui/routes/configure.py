"""Configure: one deploy form per booked node, built from its agent's form schema."""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import FormData, UploadFile

from piseduce.sshkeys import parse_key, parse_keys
from piseduce.webui.agents import AgentHub, AgentRef, Identity, Reply
from piseduce.webui.models import User
from piseduce.webui.web import current_user, flash, form_list, form_str, hub, identity, redirect, render

router = APIRouter(prefix="/configure")

FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
REF_RE = re.compile(r"^(\d{1,9}):(\d{1,10})$")
MAX_CARDS = 500
# A firmware upload (IoT-LAB); the agent checks its own limit too.
MAX_UPLOAD = 4 * 1024 * 1024


@dataclass
class Card:
    idx: int
    agent: AgentRef
    reservation: dict[str, Any]
    fields: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.agent.id}:{self.reservation.get('id')}"


async def configuring(h: AgentHub, who: Identity) -> tuple[list[Card], list[str]]:
    """The user's reservations waiting for their deploy form, with the form of each."""
    refs = h.refs()
    lists = await h.fan_out(
        refs, lambda r: h.call(r, "GET", "/api/reservations", who=who, params={"status": "configuring"})
    )
    cards: list[Card] = []
    errors: list[str] = []
    for reply in lists:
        if not reply.ok or not isinstance(reply.data, list):
            errors.append(
                "Agent " + (reply.words if not reply.ok else f"{reply.agent.name}: unexpected answer")
            )
            continue
        for r in reply.data:
            if isinstance(r, dict) and r.get("status") == "configuring" and r.get("owner") == who.email:
                cards.append(Card(len(cards), reply.agent, r))
    cards = cards[:MAX_CARDS]
    forms = await asyncio.gather(
        *(
            h.call(c.agent, "GET", f"/api/reservations/{int(c.reservation['id'])}/form", who=who)
            for c in cards
        )
    )
    for card, form in zip(cards, forms, strict=True):
        if form.ok and isinstance(form.data, list):
            card.fields = [
                f for f in form.data if isinstance(f, dict) and FIELD_RE.match(str(f.get("name", "")))
            ]
        else:
            card.error = f"deploy form unavailable: {form.error or 'unexpected answer'}"
    cards.sort(key=lambda c: (c.agent.node_type, c.agent.name, str(c.reservation.get("node"))))
    for i, c in enumerate(cards):
        c.idx = i
    return cards, errors


def _account_keys(user: User) -> list[dict[str, str]]:
    out = []
    for line in user.ssh_keys or []:
        try:
            k = parse_key(line)
        except ValueError:
            continue
        out.append({"fingerprint": k.fingerprint, "kind": k.kind, "comment": k.comment, "line": k.line})
    return out


@router.get("")
async def configure_page(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    cards, errors = await configuring(h, identity(request, user))
    return _page(request, user, cards, errors)


def _page(request: Request, user: User, cards: list[Card], errors: list[str], status: int = 200) -> Response:
    types = sorted({c.agent.node_type for c in cards})
    return render(
        request,
        "configure.html",
        {
            "page": "configure",
            "cards": cards,
            "errors": errors,
            "types": types,
            "account_keys": _account_keys(user),
            "bin": request.session.get("last_bin", ""),
        },
        status=status,
    )


async def _add_upload(params: dict[str, Any], name: str, upload: Any) -> None:
    """A file field goes to the agent base64-encoded, its name in `<name>_name` unless typed in."""
    if not isinstance(upload, UploadFile) or not upload.filename:
        return
    data = await upload.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise ValueError(f"{name}: the file is larger than {MAX_UPLOAD // (1024 * 1024)} MiB")
    if data:
        params[name] = base64.b64encode(data).decode()
        params.setdefault(f"{name}_name", PurePath(upload.filename).name[:128])


async def _params(form: FormData, idx: int, account: dict[str, str]) -> dict[str, Any]:
    """The deploy body of card `idx`; ValueError in words for what cannot be sent."""
    prefix = f"r{idx}."
    params: dict[str, Any] = {}
    checkboxes = set(form_list(form, f"{prefix}__checkbox", 64))
    numbers = set(form_list(form, f"{prefix}__number", 64))
    files = set(form_list(form, f"{prefix}__file", 64))
    for key in form:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in ("ref", "ssh_keys", "ssh_keys_extra") or name.startswith("__") or not FIELD_RE.match(name):
            continue
        if name in files:
            continue
        value = form_str(form, key, 16384)
        if name in checkboxes:
            continue
        if name in numbers and value.strip():
            try:
                num = float(value)
            except ValueError:
                raise ValueError(f"{name}: a number is expected") from None
            params[name] = int(num) if num.is_integer() else num
        elif value != "":
            params[name] = value
    for name in files:
        if FIELD_RE.match(name):
            await _add_upload(params, name, form.get(f"{prefix}{name}"))
    for name in checkboxes:
        if FIELD_RE.match(name):
            params[name] = form_str(form, f"{prefix}{name}", 8) in ("on", "true", "1")
    if f"{prefix}__ssh" in form:
        keys = [account[fp] for fp in form_list(form, f"{prefix}ssh_keys", 100) if fp in account]
        extra = form_str(form, f"{prefix}ssh_keys_extra", 64 * 1024)
        if extra.strip():
            keys += [k.line for k in parse_keys(extra)]
        params["ssh_keys"] = list(dict.fromkeys(keys))
    return params


@router.post("/deploy")
async def deploy(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    form = await request.form()
    who = identity(request, user)
    refs = {r.id: r for r in h.refs()}
    bin_name = form_str(form, "bin", 64).strip()
    errors: list[str] = []
    if not re.match(r"^[A-Za-z0-9 ._-]{1,64}$", bin_name):
        errors.append(
            "Give a bin name (letters, digits, spaces, '.', '_', '-'): it groups these nodes on Manage."
        )
    account = {k["fingerprint"]: k["line"] for k in _account_keys(user)}
    jobs: list[tuple[int, AgentRef, int, dict[str, Any]]] = []
    for i in range(MAX_CARDS):
        ref_text = form_str(form, f"r{i}.ref", 32)
        if not ref_text:
            continue
        m = REF_RE.match(ref_text)
        if not m or int(m.group(1)) not in refs:
            errors.append(f"Unknown reservation {ref_text!r}.")
            continue
        try:
            params = await _params(form, i, account)
        except ValueError as exc:
            errors.append(f"Node {i + 1}: {exc}")
            continue
        params["bin"] = bin_name
        jobs.append((i, refs[int(m.group(1))], int(m.group(2)), params))
    if not jobs and not errors:
        errors.append("No node to deploy.")
    if errors:
        cards, agent_errors = await configuring(h, who)
        return _page(request, user, cards, errors + agent_errors, status=400)
    request.session["last_bin"] = bin_name
    replies: list[Reply] = await asyncio.gather(
        *(
            h.call(ref, "POST", f"/api/reservations/{rid}/deploy", who=who, json=params)
            for _i, ref, rid, params in jobs
        )
    )
    failed = {}
    for job, reply in zip(jobs, replies, strict=True):
        if not reply.ok:
            failed[job[0]] = reply.error
    started = len(jobs) - len(failed)
    if not failed:
        flash(request, f"Deployment started on {started} node(s) of bin {bin_name}.", "ok")
        return redirect(request, "/manage")
    cards, agent_errors = await configuring(h, who)
    by_ref = {f"{ref.id}:{rid}": failed[i] for i, ref, rid, _p in jobs if i in failed}
    for c in cards:
        if c.ref in by_ref:
            c.error = f"Deploy refused: {by_ref[c.ref]}"
    msgs = [f"{started} node(s) started deploying." if started else "No deployment started."]
    msgs += [f"{ref.name} reservation {rid}: {failed[i]}" for i, ref, rid, _p in jobs if i in failed]
    return _page(request, user, cards, msgs + agent_errors, status=400)


@router.post("/cancel")
async def cancel(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    form = await request.form()
    who = identity(request, user)
    refs = {r.id: r for r in h.refs()}
    targets = []
    for ref_text in form_list(form, "sel", 32)[:MAX_CARDS]:
        m = REF_RE.match(ref_text)
        if m and int(m.group(1)) in refs:
            targets.append((refs[int(m.group(1))], int(m.group(2))))
    if not targets:
        flash(request, "Nothing selected to cancel.", "error")
        return redirect(request, "/configure")
    replies = await asyncio.gather(
        *(h.call(ref, "POST", f"/api/reservations/{rid}/destroy", who=who) for ref, rid in targets)
    )
    ok = sum(1 for r in replies if r.ok)
    if ok:
        flash(request, f"{ok} reservation(s) cancelled; the nodes are free again.", "ok")
    for (ref, rid), reply in zip(targets, replies, strict=True):
        if not reply.ok:
            flash(request, f"{ref.name} reservation {rid}: not cancelled — {reply.error}", "error")
    return redirect(request, "/configure")
