"""HTTP face of the emulated IoT-LAB site: the REST routes iotlabcli calls (under `/api/`), with HTTP
basic auth and the testbed's error format `{"code": ..., "message": ...}`, plus `/_sim/...` routes
that tests use to inject faults and other users' experiments (loopback only, no auth).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from piseduce.sim.iotlab import experiment_routes
from piseduce.sim.iotlab.deps import ERROR_HANDLERS, Auth, SiteDep
from piseduce.sim.iotlab.model import Site
from piseduce.sim.iotlab.records import NODE_STATES, ApiError, User, ids_string


class FaultsIn(BaseModel):
    submit_error: str | None = Field(default=None, max_length=1000)
    launch_error: str | None = Field(default=None, max_length=1000)
    error_rate: float | None = Field(default=None, ge=0, le=1)


class ForeignExperiment(BaseModel):
    user: str = Field(default="someone-else", min_length=1, max_length=64)
    nodes: list[str] = Field(min_length=1)
    duration: int = Field(default=60, ge=1)
    reservation: int | None = None
    name: str | None = None


class NodeStateIn(BaseModel):
    state: str


router = APIRouter()


# ---------------------------------------------------------------- public


@router.get("/api/sites")
async def sites(site: SiteDep) -> dict[str, Any]:
    return {"items": [{"site": site.name}]}


# ---------------------------------------------------------------- account


@router.get("/api/user")
async def get_user(site: SiteDep, u: User = Auth) -> dict[str, Any]:
    return {"login": u.login, "email": f"{u.login}@users.iot-lab.invalid", "sshkeys": len(u.ssh_keys)}


@router.get("/api/user/keys")
async def get_keys(site: SiteDep, u: User = Auth) -> dict[str, Any]:
    return {"sshkeys": list(u.ssh_keys)}


@router.post("/api/user/keys")
async def set_keys(site: SiteDep, body: Any = Body(None), u: User = Auth) -> Response:
    keys = body.get("sshkeys") if isinstance(body, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) < 16384 for k in keys):
        raise ApiError(400, 'Expected {"sshkeys": [...]}')
    u.ssh_keys = list(keys)
    return Response(status_code=200)


# ---------------------------------------------------------------- testbed


@router.get("/api/sites/details")
async def sites_details(site: SiteDep, u: User = Auth) -> dict[str, Any]:
    archis: dict[str, set[str]] = {}
    for item in site.nodes_json():
        archis.setdefault(item["archi"], set()).add(item["state"])
    return {
        "items": [
            {
                "site": site.name,
                "archis": [{"archi": a, "states": sorted(s)} for a, s in sorted(archis.items())],
            }
        ]
    }


def _selections(request: Request) -> dict[str, str]:
    allowed = ("archi", "site", "state", "mobile")
    return {k: v for k, v in request.query_params.items() if k in allowed}


@router.get("/api/nodes")
async def nodes(site: SiteDep, request: Request, u: User = Auth) -> dict[str, Any]:
    return {"items": site.nodes_json(**_selections(request))}


@router.get("/api/nodes/ids")
async def nodes_ids(site: SiteDep, request: Request, u: User = Auth) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[int]] = {}
    for item in site.nodes_json(**_selections(request)):
        number = int(item["network_address"].split(".", 1)[0].rsplit("-", 1)[1])
        groups.setdefault((item["site"], item["archi"]), []).append(number)
    return {
        "items": [
            {"site": s, "archi": a, "nodes_ids": ids_string(ids)} for (s, a), ids in sorted(groups.items())
        ]
    }


# ---------------------------------------------------------------- monitoring profiles


@router.get("/api/monitoring")
async def profiles(site: SiteDep, u: User = Auth, archi: str | None = None) -> list[dict[str, Any]]:
    return site.profiles(u.login, archi)


@router.post("/api/monitoring")
async def add_profile(site: SiteDep, body: Any = Body(None), u: User = Auth) -> dict[str, Any]:
    return site.add_profile(u.login, body)


@router.get("/api/monitoring/{name}")
async def get_profile(site: SiteDep, name: str, u: User = Auth) -> dict[str, Any]:
    if name not in u.profiles:
        raise ApiError(404, f"Profile {name!r} not found")
    return u.profiles[name]


@router.delete("/api/monitoring/{name}")
async def del_profile(site: SiteDep, name: str, u: User = Auth) -> Response:
    if u.profiles.pop(name, None) is None:
        raise ApiError(404, f"Profile {name!r} not found")
    return Response(status_code=204)


# ---------------------------------------------------------------- emulator controls


@router.get("/_sim/faults")
async def get_faults(site: SiteDep) -> dict[str, Any]:
    return site.faults.as_json()


@router.post("/_sim/faults")
async def set_faults(site: SiteDep, body: FaultsIn) -> dict[str, Any]:
    for key, value in body.model_dump(exclude_none=True).items():
        setattr(site.faults, key, value)
    return site.faults.as_json()


@router.post("/_sim/experiments")
async def foreign_experiment(site: SiteDep, body: ForeignExperiment) -> dict[str, Any]:
    """An experiment of a user who is not in the users file (someone else on the testbed)."""
    site.users.setdefault(body.user, User(login=body.user, password=""))
    desc = {"type": "physical", **body.model_dump(exclude={"user"})}
    return {"id": site.submit(body.user, desc, {})}


@router.post("/_sim/nodes/{address}")
async def node_state(site: SiteDep, address: str, body: NodeStateIn) -> dict[str, Any]:
    if address not in site.nodes:
        raise ApiError(404, f"Unknown node {address}")
    if body.state not in NODE_STATES or body.state == "Busy":
        raise ApiError(400, f"state must be one of {[s for s in NODE_STATES if s != 'Busy']}")
    site.nodes[address].state = body.state
    return {"network_address": address, "state": body.state}


@router.get("/_sim/state")
async def sim_state(site: SiteDep) -> dict[str, Any]:
    site.advance()
    return {
        "site": site.name,
        "time_scale": site.time_scale,
        "faults": site.faults.as_json(),
        "nodes": site.nodes_json(),
        "experiments": [e.as_json() for e in sorted(site.experiments.values(), key=lambda e: e.id)],
    }


@router.get("/api/health")
async def health(site: SiteDep) -> dict[str, str]:
    return {"status": "ok"}


def create_app(site: Site) -> FastAPI:
    """The emulator's app: its routes (module-level routers: this one, experiment_routes.py), the
    testbed's error format, and the site they serve as a dependency (`SiteDep`)."""
    app = FastAPI(title=f"IoT-LAB emulator ({site.name})", docs_url=None, redoc_url=None)
    app.state.site = site
    for exc_class, handler in ERROR_HANDLERS:
        app.add_exception_handler(exc_class, handler)
    app.include_router(router)
    app.include_router(experiment_routes.router)
    return app
