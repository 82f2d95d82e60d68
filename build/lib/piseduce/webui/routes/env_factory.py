"""Environment factory: save the system of one of your deployed Raspberry Pi nodes as a new
environment (yours only) that you can deploy on other nodes.

The page lists the caller's deployed raspberry reservations of every agent (asked concurrently,
each call bounded by the hub's deadline); the POST forwards the name to that agent's
`register_env` action, whose progress shows on Manage like any other process."""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.protocol import DEPLOYED, Feature
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.agents import Identity
from piseduce.webui.models import User
from piseduce.webui.web import current_user, flash, form_str, identity, redirect, render

router = APIRouter(prefix="/env-factory")
PAGE = "/env-factory"
# The agent's own rule (agent/env_factory.py): a name that fails it would only earn a 422.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The same rule for the browser's `pattern` attribute (anchored by the browser itself).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}"
NAME_RULE = ("Environment name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit.")
# ASCII digits only: \d would also match "١٠" (which int() reads as 10).
REF_RE = re.compile(r"^([0-9]{1,9}):([0-9]{1,10})$")


async def deployed_nodes(h: AgentClient, who: Identity) -> tuple[list[dict[str, Any]], list[str]]:
    """The caller's deployed nodes on the agents that can save one as an environment:
    [{ref, node, agent, environment}], and agent errors."""
    refs = [r for r in await h.refs() if r.supports(Feature.SAVE_ENV)]
    held, errors = await h.held(who, status=DEPLOYED, refs=refs)
    nodes: list[dict[str, Any]] = [
        {
            "ref": f"{x.agent.id}:{x.r.id}",
            "node": x.r.node,
            "agent": x.agent.name,
            "environment": str(x.r.params.get("environment") or ""),
        }
        for x in held
        if x.mine
    ]
    nodes.sort(key=lambda n: (n["agent"], n["node"]))
    return nodes, errors


def _page(
    request: Request,
    nodes: list[dict[str, Any]],
    errors: list[str],
    *,
    chosen: str = "",
    name: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    """The page; after a refusal it comes back with the node and the name the user gave."""
    return render(
        request,
        "env_factory.html",
        {
            "page": "env_factory",
            "nodes": nodes,
            "errors": errors,
            "chosen": chosen,
            "name": name,
            "error": error,
            "name_pattern": NAME_PATTERN,
        },
        status=status,
    )


@router.get("")
async def page(
    request: Request, node: str = "", user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    """`node`: the reference of the node to preselect (Manage's "Save as environment" button)."""
    nodes, errors = await deployed_nodes(h, identity(request, user))
    return _page(request, nodes, errors, chosen=node[:32])


@router.post("")
async def register(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    form = await request.form()
    who = identity(request, user)
    ref_text = form_str(form, "node", 32)
    name = form_str(form, "name", 128).strip()
    # Only a node of the caller's own list (read again now): a forged reference goes nowhere.
    nodes, errors = await deployed_nodes(h, who)
    again = partial(_page, request, nodes, errors, chosen=ref_text, name=name, status=400)
    if not NAME_RE.match(name):
        return again(error=NAME_RULE)
    chosen = next((n for n in nodes if n["ref"] == ref_text), None)
    m = REF_RE.match(ref_text)
    agent = next((r for r in await h.refs() if m and r.id == int(m.group(1))), None)
    if chosen is None or m is None or agent is None:
        return again(error="Choose one of your deployed Raspberry Pi nodes.")
    reply = await h.register_env(agent, who, int(m.group(2)), name)
    if not reply.ok:
        return again(error=f"{chosen['node']} could not be saved as {name}: {reply.words}")
    flash(request, f"{chosen['node']} is being saved as the environment {name}: it reboots on its "
                   "netboot system, its card is copied, then it boots its own system again. Follow the "
                   "progress on Manage; the environment then appears in your Configure choices.", "ok")
    return redirect(request, PAGE)
