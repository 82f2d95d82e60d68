"""The admin page of the OS environments (agents with the environments feature): each agent's
images, Save (a slow sha256 is only slow), deletion, the default environment and a scan of the
agent's image folder."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.numbers import StrictInt, read_int
from piseduce.protocol import Feature
from piseduce.webui import audit
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.models import User
from piseduce.webui.routes.infra_calls import (
    agents_with,
    back_to,
    change,
    delete_item,
    find_agent,
    list_block,
)
from piseduce.webui.routes.infra_forms import (
    ITEM_NAME_RE,
    FormError,
    form_dict,
    int_field,
)
from piseduce.webui.web import admin_user, flash, form_str, identity, redirect, render

router = APIRouter(prefix="/admin")
ENVS_PAGE = "/admin/environments"


ENV_FORM_KEYS = (
    "name",
    "image",
    "size",
    "sector_start",
    "ssh_user",
    "checksum",
    "description",
    "state",
    "owner",
)


async def _envs_page(
    request: Request,
    me: User,
    h: AgentClient,
    *,
    form_agent: int = 0,
    form: dict[str, str] | None = None,
    editing: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    who = identity(request, me)
    refs = await agents_with(h, Feature.ENVIRONMENTS)
    blocks = await asyncio.gather(*(list_block(h.environments(r, who), "environments") for r in refs))
    return render(
        request,
        "admin_environments.html",
        {
            "page": "admin_environments",
            "blocks": blocks,
            "form_agent": form_agent,
            "form": form or {"ssh_user": "root", "size": "0", "sector_start": "0", "state": "available"},
            "editing": editing,
            "error": error,
        },
        status=status,
    )


@router.get("/environments")
async def environments_page(
    request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    """The environments; `?agent=<id>&edit=<name>` fills the form with one of them."""
    agent_text = request.query_params.get("agent", "")
    edit = request.query_params.get("edit", "")[:128]
    agent_id = read_int(agent_text, lo=1)
    if agent_id is not None and ITEM_NAME_RE.match(edit):
        ref = await find_agent(h, agent_id)
        if ref is not None:
            reply = await h.environment(ref, identity(request, me), edit)
            if reply.value is not None:
                data = reply.value.model_dump()
                form = {k: "" if data.get(k) is None else str(data.get(k)) for k in ENV_FORM_KEYS}
                form["web"] = "on" if reply.value.web else ""
                return await _envs_page(request, me, h, form_agent=ref.id, form=form, editing=edit)
            flash(request, f"Environment {edit}: {reply.words}", "error")
    return await _envs_page(request, me, h)


def env_body(form: dict[str, str]) -> dict[str, Any]:
    name = form.get("name", "").strip()
    if not ITEM_NAME_RE.match(name):
        raise FormError("name: 1 to 128 letters, digits, '.', '_' or '-'")
    image = form.get("image", "").strip()
    if not image:
        raise FormError("image: the file name of the image in the agent's env_path")
    body: dict[str, Any] = {
        "name": name,
        "image": image,
        "size": int_field(form, "size", "size", 0, 2**53, 0),
        "sector_start": int_field(form, "sector_start", "sector start", 0, 2**53, 0),
        "ssh_user": form.get("ssh_user", "").strip() or "root",
        "checksum": form.get("checksum", "").strip(),
        "description": form.get("description", "").strip(),
        "web": form.get("web", "") in ("on", "true", "1"),
        "state": form.get("state", "available")
        if form.get("state") in ("available", "disabled")
        else "available",
        "owner": form.get("owner", "").strip(),
    }
    return body


ENV_SLOW_HINT = "it may still be computing the image's sha256 (give the checksum to skip that)"


@router.post("/environments/{agent_id}")
async def save_environment(
    agent_id: StrictInt, request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    """Add an environment, or update it when the form says which one it edits."""
    raw = await request.form()
    form = form_dict(raw, ENV_FORM_KEYS)
    form["web"] = form_str(raw, "web", 10)
    editing = form_str(raw, "editing", 128)
    ref = await find_agent(h, agent_id, Feature.ENVIRONMENTS)
    if ref is None:
        return back_to(request, ENVS_PAGE, "No such agent with environments.")
    form_again = partial(
        _envs_page, request, me, h, form_agent=agent_id, form=form, editing=editing, status=400
    )
    try:
        body = env_body(form)
        if editing and editing != body["name"]:
            raise FormError(f"name: an environment cannot be renamed ({editing}); add a new one instead")
    except FormError as exc:
        return await form_again(error=str(exc))
    verb = "updated" if editing else "added"
    _reply, problem = await change(
        h, ref, h.save_environment(ref, identity(request, me), body, editing), slow_hint=ENV_SLOW_HINT
    )
    if problem:
        return await form_again(error=f"Environment not {verb}: {problem}")
    await audit.note(request, me, "environment.save", ("environment", f"{ref.name}/{body['name']}"),
                     {"change": verb})
    return back_to(request, ENVS_PAGE, f"Environment {body['name']} {verb} on {ref.name}.", "ok")


@router.post("/environments/{agent_id}/delete/{name}")
async def delete_environment(
    agent_id: StrictInt,
    name: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    return await delete_item(
        request, me, h, agent_id, name, "environment", "environments", ENVS_PAGE,
        lambda ref, _reply: f"Environment {name} deleted from {ref.name} (the image file stays in env_path).",
    )


@router.post("/environments/{agent_id}/default/{name}")
async def default_environment(
    agent_id: StrictInt,
    name: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    """Make an environment the default of its agent's deploy forms (`default=on`), or unset it."""
    ref = await find_agent(h, agent_id, Feature.ENVIRONMENTS)
    if ref is None or not ITEM_NAME_RE.match(name):
        return back_to(request, ENVS_PAGE, "No such agent with environments, or no such environment.")
    on = form_str(await request.form(), "default", 4) != "off"
    _reply, problem = await change(h, ref, h.default_environment(ref, identity(request, me), name, on))
    if problem:
        return back_to(request, ENVS_PAGE, f"Default of {ref.name} not changed: {problem}")
    target = ("environment", f"{ref.name}/{name}")
    await audit.note(request, me, "environment.default", target, {"default": on})
    done = (f"{name} is now the default environment of {ref.name}." if on else
            f"{name} is no longer the default of {ref.name}: forms preselect the newest public environment.")
    return back_to(request, ENVS_PAGE, done, "ok")


@router.post("/environments/{agent_id}/scan")
async def scan_environments(
    agent_id: StrictInt, request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    ref = await find_agent(h, agent_id, Feature.ENVIRONMENTS)
    if ref is None:
        return back_to(request, ENVS_PAGE, "No such agent with environments.")
    reply, problem = await change(
        h, ref, h.scan_environments(ref, identity(request, me)), slow_hint=ENV_SLOW_HINT
    )
    if problem or reply.value is None:
        return back_to(request, ENVS_PAGE, f"Scan of {ref.name} failed: {problem}")
    added, updated, skipped = reply.value.added, reply.value.updated, reply.value.skipped
    await audit.note(request, me, "environment.scan", ("agent", ref.name),
                     {"added": added, "updated": updated})
    parts = [
        f"{len(added)} added" + (f" ({', '.join(added)})" if added else ""),
        f"{len(updated)} updated" + (f" ({', '.join(updated)})" if updated else ""),
    ]
    flash(request, f"Scan of {ref.name}'s env_path: " + ", ".join(parts) + ".", "ok")
    for sidecar, why in list(skipped.items())[:8]:
        flash(request, f"Skipped {sidecar}: {why}", "error")
    return redirect(request, ENVS_PAGE)
