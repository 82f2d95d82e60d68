"""Admin pages: user accounts and agents."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce import crypto
from piseduce.numbers import StrictInt, parse_int
from piseduce.webui import audit, auth, tokens
from piseduce.webui.agent_client import AgentClient, agents
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
from piseduce.webui.notify import account as notify_account
from piseduce.webui.sessions import end_user_sessions
from piseduce.webui.web import admin_user, database, flash, form_str, redirect, render

router = APIRouter(prefix="/admin")

AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


# ---------------------------------------------------------------- users


@router.get("/users")
async def users_page(request: Request, me: User = Depends(admin_user)) -> Response:
    users = await database(request).read(lambda s: list(s.scalars(select(User).order_by(User.email))))
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
# Actions after which the account's sessions end at once: a revoked account is out, and a new
# role is taken with a new login.
ENDS_SESSIONS = ("revoke", "promote", "demote", "remove")


@dataclass
class Done:
    message: str
    kind: str = "ok"
    ended: bool = False  # the account's sessions were ended


def apply_user_action(db: Session, user_id: int, action: str) -> Done:
    """One admin action on an account, in the caller's write transaction."""
    target = db.get(User, user_id)
    if target is None or action not in USER_ACTIONS:
        return Done("No such user or action.", "error")
    if action in ("revoke", "demote", "remove") and auth.is_last_admin(db, target):
        return Done(f"{target.email} is the last admin: promote another user first.", "error")
    if action == "promote" and not target.is_active:
        return Done("Approve the account before making it an admin.", "error")
    messages = {
        "approve": f"{target.email} can now log in.",
        "revoke": f"{target.email} can no longer log in.",
        "promote": f"{target.email} is now an admin (logged out: the role applies from the next login).",
        "demote": f"{target.email} is no longer an admin (logged out: the role applies from the next login).",
        "remove": f"{target.email} removed.",
    }
    if action == "approve":
        if target.state != STATE_ACTIVE:
            notify_account.approved(db, target)
        target.state = STATE_ACTIVE
    elif action == "revoke":
        target.state = STATE_REVOKED
        # For good, as its sessions: approving the account again brings back no token that may
        # have leaked (the reason to revoke it).
        tokens.revoke_all(db, user_id, dt.datetime.now(dt.UTC))
    elif action in ("promote", "demote"):
        target.role = ROLE_ADMIN if action == "promote" else ROLE_USER
    ended = action in ENDS_SESSIONS and end_user_sessions(db, user_id) > 0
    if action == "remove":
        db.delete(target)
    return Done(messages[action], ended=ended)


@router.post("/users/{user_id}/{action}")
async def user_action(
    user_id: StrictInt, action: str, request: Request, me: User = Depends(admin_user)
) -> Response:
    done = await database(request).write(
        audit.user_action(lambda s: apply_user_action(s, user_id, action), audit.who(request, me), user_id,
                          action))
    flash(request, done.message, done.kind)
    if done.kind == "ok" and user_id == me.id and action in ENDS_SESSIONS:
        return redirect(request, "/login")  # the admin's own session ended with the others
    return redirect(request, "/admin/users")


# ---------------------------------------------------------------- agents


def _agents(s: Session) -> list[Agent]:
    return list(s.scalars(select(Agent).order_by(Agent.name)))


@router.get("/agents")
async def agents_page(
    request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    rows = await database(request).read(_agents)
    return render(
        request,
        "admin_agents.html",
        {
            "page": "admin_agents",
            "agents": rows,
            "down": {a.id: h.is_down(a.id) for a in rows},
            "form": {"name": "", "host": "", "port": ""},
        },
    )


@router.get("/agents/table")
async def agents_table(request: Request, me: User = Depends(admin_user)) -> Response:
    """The Existing Agents panel alone: the page polls it, so the health checker's verdicts show."""
    rows = await database(request).read(_agents)
    return render(request, "_agents_table.html", {"agents": rows})


def _check_agent_form(name: str, host: str, port_text: str, token: str) -> tuple[str | None, int]:
    if not AGENT_NAME_RE.match(name):
        return "The name takes 1 to 64 letters, digits, '.', '_' or '-'.", 0
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOST_RE.match(host):
            return "Enter an IP address or a host name.", 0
    try:
        port = parse_int(port_text, hand_typed=True)
    except ValueError:
        return "The port is a number between 1 and 65535.", 0
    if not 1 <= port <= 65535:
        return "The port is a number between 1 and 65535.", 0
    if len(token) < 10 or len(token) > 512:
        return "The token has at least 10 characters (the agent's auth_token).", 0
    return None, port


def _agent_named(s: Session, name: str) -> bool:
    return s.scalar(select(Agent.id).where(Agent.name == name)) is not None


@router.post("/agents")
async def add_agent(
    request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    form = await request.form()
    name = form_str(form, "name", 100).strip()
    host = form_str(form, "host", 300).strip()
    port_text = form_str(form, "port", 10)
    token = form_str(form, "token", 600).strip()
    db = database(request)
    error, port = _check_agent_form(name, host, port_text, token)
    if error is None and await db.read(lambda s: _agent_named(s, name)):
        error = f"An agent named {name} exists already."
    status = ""
    if error is None:
        status, probe_error, _info = await h.probe(host, port, token)
        if status != AGENT_CONNECTED:
            error = f"Agent not added: {host}:{port} {probe_error}."
    if error is not None:
        rows = await db.read(_agents)
        return render(
            request,
            "admin_agents.html",
            {
                "page": "admin_agents",
                "agents": rows,
                "down": {a.id: h.is_down(a.id) for a in rows},
                "error": error,
                "form": {"name": name, "host": host, "port": port_text},
            },
            status=400,
        )
    sealed = crypto.encrypt_str(request.app.state.fernet, token)
    actor = audit.who(request, me)

    def store(s: Session) -> int | None:
        if _agent_named(s, name):
            return None
        agent = Agent(name=name, host=host, port=port, token=sealed, status=status)
        s.add(agent)
        s.flush()
        audit.record(s, actor, "agent.add", ("agent", agent.id), {"name": name, "host": host, "port": port})
        return agent.id

    agent_id = await db.write(store)
    if agent_id is None:
        flash(request, f"An agent named {name} exists already.", "error")
        return redirect(request, "/admin/agents")
    await h.check_agent(agent_id)
    agent = await db.read(lambda s: s.get(Agent, agent_id))
    where = agent.site if agent is not None and agent.site else "its site"
    kind = agent.node_type if agent is not None else "its"
    flash(request, f"Agent {name} is connected: {kind} nodes at {where}.", "ok")
    return redirect(request, "/admin/agents")


@router.post("/agents/{agent_id}/check")
async def check_agent(
    agent_id: StrictInt, request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    status = await h.check_agent(agent_id)
    agent = await database(request).read(lambda s: s.get(Agent, agent_id))
    if agent is None:
        flash(request, "No such agent.", "error")
        return redirect(request, "/admin/agents")
    kind = "ok" if status == AGENT_CONNECTED else "error"
    flash(
        request,
        f"Agent {agent.name}: {status}" + (f" ({agent.last_error})" if agent.last_error else ""),
        kind,
    )
    return redirect(request, "/admin/agents")


@router.post("/agents/{agent_id}/delete")
async def delete_agent(
    agent_id: StrictInt, request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    actor = audit.who(request, me)

    def drop(s: Session) -> str | None:
        agent = s.get(Agent, agent_id)
        if agent is None:
            return None
        s.delete(agent)
        audit.record(s, actor, "agent.remove", ("agent", agent_id), {"name": agent.name, "host": agent.host})
        return agent.name

    name = await database(request).write(drop)
    if name is None:
        flash(request, "No such agent.", "error")
    else:
        h.breakers.pop(agent_id, None)
        flash(request, f"Agent {name} deleted (its nodes and reservations stay on the agent).", "ok")
    return redirect(request, "/admin/agents")
