"""The emulated IoT-LAB experiment routes (submit, list, follow, stop, reload, flash, scripts,
robots, node commands): a module-level router whose routes get the site as a dependency."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from piseduce.sim.iotlab import features
from piseduce.sim.iotlab.deps import MAP_PNG, Auth, SiteDep, associated, multipart
from piseduce.sim.iotlab.model import Site
from piseduce.sim.iotlab.records import ACTIVE, OAR_STATES, ApiError, User, ids_string, iso

router = APIRouter()


# ---------------------------------------------------------------- experiments


@router.post("/api/experiments")
async def submit(site: SiteDep, request: Request, u: User = Auth) -> dict[str, Any]:
    files = await multipart(request)
    raw = files.pop("new_exp.json", None)
    if raw is None:
        raise ApiError(400, "Missing experiment description new_exp.json")
    try:
        description = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "new_exp.json is not valid JSON") from None
    if not isinstance(description, dict):
        raise ApiError(400, "new_exp.json must be a JSON object")
    return {"id": site.submit(u.login, description, files)}


@router.get("/api/experiments")
async def my_experiments(
    site: SiteDep, u: User = Auth, state: str = "", limit: int = 0, offset: int = 0
) -> dict[str, Any]:
    states = [s for s in state.split(",") if s] or list(OAR_STATES)
    bad = sorted(set(states) - set(OAR_STATES))
    if bad:
        raise ApiError(400, f"Invalid experiment states: {bad}")
    mine = sorted(
        (e for e in site.experiments.values() if e.user == u.login and e.state in states),
        key=lambda e: -e.id,
    )
    total = len(mine)
    mine = mine[max(offset, 0) :]
    if limit > 0:
        mine = mine[:limit]
    return {"items": [e.summary() for e in mine], "total": total}


@router.get("/api/experiments/running")
async def running(site: SiteDep, u: User = Auth) -> dict[str, Any]:
    active = sorted((e for e in site.experiments.values() if e.state in ACTIVE), key=lambda e: e.id)
    return {"items": [{**e.summary(), "nodes": list(e.nodes)} for e in active]}


@router.get("/api/experiments/{exp_id}")
async def experiment(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    return site.owned(u.login, exp_id).as_json()


@router.get("/api/experiments/{exp_id}/nodes")
async def experiment_nodes(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    exp = site.owned(u.login, exp_id)
    return {"items": [n for n in site.nodes_json() if n["network_address"] in exp.nodes]}


@router.get("/api/experiments/{exp_id}/nodes_ids")
async def experiment_nodes_ids(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    exp = site.owned(u.login, exp_id)
    numbers = [int(a.split(".", 1)[0].rsplit("-", 1)[1]) for a in exp.nodes]
    return {"items": [{"site": site.name, "nodes_ids": ids_string(numbers)}]}


@router.get("/api/experiments/{exp_id}/resources")
async def experiment_resources(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    exp = site.owned(u.login, exp_id)
    return {"items": [n for n in site.nodes_json() if n["network_address"] in exp.nodes]}


@router.get("/api/experiments/{exp_id}/resources_ids")
async def experiment_resources_ids(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    exp = site.owned(u.login, exp_id)
    groups: dict[str, list[int]] = {}
    for n in exp.nodes:
        groups.setdefault(site.nodes[n].archi, []).append(site.nodes[n].number)
    return {
        "items": [
            {"site": site.name, "archi": a, "nodes_ids": ids_string(ids)} for a, ids in sorted(groups.items())
        ]
    }


@router.get("/api/experiments/{exp_id}/state")
async def experiment_state(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    return {"state": site.owned(u.login, exp_id).state}


@router.get("/api/experiments/{exp_id}/start_date")
async def experiment_start(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    exp = site.owned(u.login, exp_id)
    begin = exp.start if exp.start is not None else exp.reservation or 0
    return {"start_time": int(begin), "local_date": iso(begin) if begin else "Unknown"}


@router.get("/api/experiments/{exp_id}/deployment")
async def deployment(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    return dict(site.owned(u.login, exp_id).deployment)


@router.get("/api/experiments/{exp_id}/data")
async def data(site: SiteDep, exp_id: int, u: User = Auth) -> Response:
    return Response(
        site.archive(u.login, exp_id),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{exp_id}.tar.gz"'},
    )


@router.delete("/api/experiments/{exp_id}")
async def stop(site: SiteDep, exp_id: int, u: User = Auth) -> dict[str, Any]:
    return site.stop(u.login, exp_id)


@router.post("/api/experiments/{exp_id}/reload")
async def reload(site: SiteDep, exp_id: int, body: Any = Body(None), u: User = Auth) -> dict[str, Any]:
    body = body if isinstance(body, dict) else {}
    return {"id": site.reload(u.login, exp_id, body.get("duration"), body.get("reservation"))}


@router.post("/api/experiments/{exp_id}/nodes/flash")
@router.post("/api/experiments/{exp_id}/nodes/flash/binary")
async def flash(site: SiteDep, exp_id: int, request: Request, u: User = Auth) -> dict[str, Any]:
    files = await multipart(request)
    listing = files.pop("nodes.json", None)
    nodes: Any
    if listing is None and "experiment.json" in files:
        nodes = json.loads(files.pop("experiment.json")).get("nodes")
    else:
        nodes = json.loads(listing) if listing is not None else None
    if len(files) != 1:
        raise ApiError(400, "Expected one firmware file and nodes.json")
    ((name, content),) = files.items()
    return site.flash(u.login, exp_id, nodes, name, content)


@router.post("/api/experiments/{exp_id}/nodes/monitoring")
async def profile_load(site: SiteDep, exp_id: int, request: Request, u: User = Auth) -> dict[str, Any]:
    return features.profile_load(site, u.login, exp_id, await multipart(request))


@router.post("/api/experiments/{exp_id}/scripts/run")
async def scripts_run(site: SiteDep, exp_id: int, request: Request, u: User = Auth) -> dict[str, Any]:
    scripts = features.running_scripts(site, u.login, exp_id)
    parts = await multipart(request)
    return associated(lambda: scripts.run(parts))


@router.post("/api/experiments/{exp_id}/scripts/{command}")
async def scripts_command(
    site: SiteDep, exp_id: int, command: str, body: Any = Body(None), u: User = Auth
) -> dict[str, Any]:
    scripts = features.running_scripts(site, u.login, exp_id)
    actions = {"status": scripts.status, "kill": scripts.kill}
    if command not in actions:
        raise ApiError(404, f"Unknown script command {command!r} (run, status or kill)")
    return associated(lambda: actions[command](body if body is not None else []))


@router.post("/api/experiments/{exp_id}/robots/status")
async def robots_status(site: SiteDep, exp_id: int, body: Any = Body(None), u: User = Auth) -> dict[str, Any]:
    return features.robot_status(site, u.login, exp_id, body if body is not None else [])


@router.post("/api/experiments/{exp_id}/robots/mobility/{name}")
async def robots_mobility(
    site: SiteDep, exp_id: int, name: str, body: Any = Body(None), u: User = Auth
) -> dict[str, Any]:
    return features.robot_mobility(site, u.login, exp_id, name, body if body is not None else [])


# The robots' map and docks are public, as iotlabcli fetches them without credentials.
@router.get("/api/robots/{name}/map/config")
async def robot_map_config(site: SiteDep, name: str) -> dict[str, Any]:
    return {
        "site": _robot_site(site, name),
        "resolution": 0.05,
        "origin": [0.0, 0.0, 0.0],
        "width": 160,
        "height": 120,
        "image": "map/image",
    }


@router.get("/api/robots/{name}/map/image")
async def robot_map_image(site: SiteDep, name: str) -> Response:
    _robot_site(site, name)
    return Response(MAP_PNG, media_type="image/png")


@router.get("/api/robots/{name}/dock/config")
async def robot_docks(site: SiteDep, name: str) -> dict[str, Any]:
    _robot_site(site, name)
    return {"items": [{**r.status()["position"], "node": r.node} for r in site.robots.values()]}


def _robot_site(site: Site, name: str) -> str:
    if name != site.name or not site.robots:
        raise ApiError(404, f"No robots on site {name}")
    return name


@router.get("/api/mobilities/circuits")
async def list_circuits(site: SiteDep, request: Request, u: User = Auth) -> list[dict[str, Any]]:
    wanted = {k: v for k, v in request.query_params.items() if k in ("site", "type")}
    return features.site_circuits(site, **wanted)


@router.get("/api/mobilities/circuits/{name}")
async def get_circuit(site: SiteDep, name: str, u: User = Auth) -> dict[str, Any]:
    for c in features.site_circuits(site):
        if c["name"] == name:
            return c
    raise ApiError(404, f"Circuit {name!r} not found")


@router.post("/api/experiments/{exp_id}/nodes/monitoring/{profile}")
async def set_profile(
    site: SiteDep, exp_id: int, profile: str, body: Any = Body(None), u: User = Auth
) -> dict[str, Any]:
    if profile not in u.profiles:
        raise ApiError(500, f"Unknown monitoring profile: {profile}")
    return site.set_monitoring(u.login, exp_id, body if body is not None else [], u.profiles[profile])


@router.post("/api/experiments/{exp_id}/nodes/{command}")
async def node_command(
    site: SiteDep, exp_id: int, command: str, body: Any = Body(None), u: User = Auth
) -> dict[str, Any]:
    commands = (
        "start",
        "stop",
        "reset",
        "debug-start",
        "debug-stop",
        "flash-idle",
        "profile-reset",
        "monitoring",
    )
    if command not in commands:
        raise ApiError(404, f"Unknown node command {command!r}")
    if command == "profile-reset":
        return site.set_monitoring(u.login, exp_id, body if body is not None else [], None)
    return site.node_command(u.login, exp_id, command, body if body is not None else [])
