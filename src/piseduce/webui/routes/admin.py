"""Admin pages: user accounts and agents."""

from __future__ import annotations

import ipaddress
import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce import crypto
from piseduce.webui import auth
from piseduce.webui.agents import AgentHub
from piseduce.webui.models import (
    AGENT_CONNECTED,
    ROLE_ADMIN,
    ROLE_USER,
    STATE_ACTIVE,
    STATE_PENDING,
    STATE_REVOKED,
    Agent,
    User,
)
from piseduce.webui.web import admin_user, begin_write, db_session, flash, form_str, hub, redirect, render

router = APIRouter(prefix="/admin")

AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


# ---------------------------------------------------------------- users


@router.get("/users")
def users_page(
    request: Request, me: User = Depends(admin_user), db: Session = Depends(db_session)
) -> Response:
    users = list(db.scalars(select(User).order_by(User.email)))
    return render(
        request,
        "admin_users.html",
        {
            "page": "admin_users",
            "pending": [u for u in users if u.state == STATE_PENDING],
            "members": [u for u in users if u.state != STATE_PENDING and u.role == ROLE_USER],
            "admins": [u for u in users if u.state != STATE_PENDING and u.role == ROLE_ADMIN],
        },
    )


USER_ACTIONS = ("approve", "revoke", "promote", "demote", "remove")


@router.post("/users/{user_id}/{action}")
def user_action(
    user_id: int,
    action: str,
    request: Request,
    me: User = Depends(admin_user),
    db: Session = Depends(db_session),
) -> Response:
    begin_write(db)
    target = db.get(User, user_id)
    if target is None or action not in USER_ACTIONS:
        flash(request, "No such user or action.", "error")
        return redirect(request, "/admin/users")
    if action in ("revoke", "demote", "remove") and auth.is_last_admin(db, target):
        flash(request, f"{target.email} is the last admin: promote another user first.", "error")
        return redirect(request, "/admin/users")
    if action == "approve":
        target.state = STATE_ACTIVE
        msg = f"{target.email} can now log in."
    elif action == "revoke":
        target.state = STATE_REVOKED
        msg = f"{target.email} can no longer log in."
    elif action == "promote":
        if not target.is_active:
            flash(request, "Approve the account before making it an admin.", "error")
            return redirect(request, "/admin/users")
        target.role = ROLE_ADMIN
        msg = f"{target.email} is now an admin."
    elif action == "demote":
        target.role = ROLE_USER
        msg = f"{target.email} is no longer an admin."
    else:
        db.delete(target)
        msg = f"{target.email} removed."
    db.commit()
    flash(request, msg, "ok")
    if target.id == me.id and action in ("revoke", "demote", "remove"):
        return redirect(request, "/login" if action != "demote" else "/reserve")
    return redirect(request, "/admin/users")


# ---------------------------------------------------------------- agents


@router.get("/agents")
def agents_page(
    request: Request,
    me: User = Depends(admin_user),
    db: Session = Depends(db_session),
    h: AgentHub = Depends(hub),
) -> Response:
    agents = list(db.scalars(select(Agent).order_by(Agent.name)))
    return render(
        request,
        "admin_agents.html",
        {
            "page": "admin_agents",
            "agents": agents,
            "down": {a.id: h.is_down(a.id) for a in agents},
            "form": {"name": "", "host": "", "port": ""},
        },
    )


@router.get("/agents/table")
def agents_table(
    request: Request,
    me: User = Depends(admin_user),
    db: Session = Depends(db_session),
) -> Response:
    """The Existing Agents panel alone: the page polls it, so the health checker's verdicts show."""
    agents = list(db.scalars(select(Agent).order_by(Agent.name)))
    return render(request, "_agents_table.html", {"agents": agents})


def _check_agent_form(name: str, host: str, port_text: str, token: str) -> tuple[str | None, int]:
    if not AGENT_NAME_RE.match(name):
        return "The name takes 1 to 64 letters, digits, '.', '_' or '-'.", 0
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOST_RE.match(host):
            return "Enter an IP address or a host name.", 0
    try:
        port = int(port_text)
    except ValueError:
        return "The port is a number between 1 and 65535.", 0
    if not 1 <= port <= 65535:
        return "The port is a number between 1 and 65535.", 0
    if len(token) < 10 or len(token) > 512:
        return "The token has at least 10 characters (the agent's auth_token).", 0
    return None, port


@router.post("/agents")
async def add_agent(
    request: Request,
    me: User = Depends(admin_user),
    db: Session = Depends(db_session),
    h: AgentHub = Depends(hub),
) -> Response:
    form = await request.form()
    name = form_str(form, "name", 100).strip()
    host = form_str(form, "host", 300).strip()
    port_text = form_str(form, "port", 10).strip()
    token = form_str(form, "token", 600).strip()
    error, port = _check_agent_form(name, host, port_text, token)
    if error is None and db.scalar(select(Agent.id).where(Agent.name == name)) is not None:
        error = f"An agent named {name} exists already."
    status = ""
    if error is None:
        status, probe_error, _info = await h.probe(host, port, token)
        if status != AGENT_CONNECTED:
            error = f"Agent not added: {host}:{port} {probe_error}."
    if error is not None:
        agents = list(db.scalars(select(Agent).order_by(Agent.name)))
        return render(
            request,
            "admin_agents.html",
            {
                "page": "admin_agents",
                "agents": agents,
                "down": {a.id: h.is_down(a.id) for a in agents},
                "error": error,
                "form": {"name": name, "host": host, "port": port_text},
            },
            status=400,
        )
    begin_write(db)
    if db.scalar(select(Agent.id).where(Agent.name == name)) is not None:
        flash(request, f"An agent named {name} exists already.", "error")
        return redirect(request, "/admin/agents")
    agent = Agent(
        name=name,
        host=host,
        port=port,
        token=crypto.encrypt_str(request.app.state.fernet, token),
        status=status,
    )
    db.add(agent)
    db.commit()
    await h.check_agent(agent.id)
    db.refresh(agent)
    flash(request, f"Agent {name} is connected: {agent.node_type} nodes at {agent.site or 'its site'}.", "ok")
    return redirect(request, "/admin/agents")


@router.post("/agents/{agent_id}/check")
async def check_agent(
    agent_id: int,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentHub = Depends(hub),
    db: Session = Depends(db_session),
) -> Response:
    agent = db.get(Agent, agent_id)
    if agent is None:
        flash(request, "No such agent.", "error")
        return redirect(request, "/admin/agents")
    status = await h.check_agent(agent_id)
    db.commit()  # a new snapshot: the check was written by another connection
    db.refresh(agent)
    kind = "ok" if status == AGENT_CONNECTED else "error"
    flash(
        request,
        f"Agent {agent.name}: {status}" + (f" ({agent.last_error})" if agent.last_error else ""),
        kind,
    )
    return redirect(request, "/admin/agents")


@router.post("/agents/{agent_id}/delete")
def delete_agent(
    agent_id: int,
    request: Request,
    me: User = Depends(admin_user),
    db: Session = Depends(db_session),
    h: AgentHub = Depends(hub),
) -> Response:
    begin_write(db)
    agent = db.get(Agent, agent_id)
    if agent is None:
        flash(request, "No such agent.", "error")
    else:
        db.delete(agent)
        db.commit()
        h.breakers.pop(agent_id, None)
        flash(request, f"Agent {agent.name} deleted (its nodes and reservations stay on the agent).", "ok")
    return redirect(request, "/admin/agents")
