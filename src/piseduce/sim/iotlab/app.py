"""HTTP face of the emulated IoT-LAB site: the REST routes iotlabcli calls (under `/api/`), with HTTP
basic auth and the testbed's error format `{"code": ..., "message": ...}`, plus `/_sim/...` routes
that tests use to inject faults and other users' experiments (loopback only, no auth).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from piseduce.sim.iotlab.model import (
    ACTIVE,
    NODE_STATES,
    OAR_STATES,
    ApiError,
    Site,
    User,
    ids_string,
)

MAX_PART_BYTES = 16 * 1024 * 1024


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


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=code, headers=headers)


def create_app(site: Site) -> FastAPI:
    app = FastAPI(title=f"IoT-LAB emulator ({site.name})", docs_url=None, redoc_url=None)
    app.state.site = site

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Basic realm="IoT-LAB"'} if exc.code == 401 else None
        return _error(exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"Invalid request: {where}: {first.get('msg', 'bad value')}")

    async def user(request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        login = password = ""
        if scheme.lower() == "basic":
            try:
                login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                login = password = ""
        account = site.authenticate(login, password) if login else None
        if account is None:
            raise ApiError(401, "Unauthorized: wrong login or password")
        if site.unlucky():
            raise ApiError(503, "Service temporarily unavailable (simulated fault)")
        site.advance()
        return account

    Auth = Depends(user)  # noqa: N806 - a dependency, named like one

    # ---------------------------------------------------------------- public

    @app.get("/api/sites")
    async def sites() -> dict[str, Any]:
        return {"items": [{"site": site.name}]}

    # ---------------------------------------------------------------- account

    @app.get("/api/user")
    async def get_user(u: User = Auth) -> dict[str, Any]:
        return {"login": u.login, "email": f"{u.login}@users.iot-lab.invalid", "sshkeys": len(u.ssh_keys)}

    @app.get("/api/user/keys")
    async def get_keys(u: User = Auth) -> dict[str, Any]:
        return {"sshkeys": list(u.ssh_keys)}

    @app.post("/api/user/keys")
    async def set_keys(body: Any = Body(None), u: User = Auth) -> Response:
        keys = body.get("sshkeys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) < 16384 for k in keys):
            raise ApiError(400, 'Expected {"sshkeys": [...]}')
        u.ssh_keys = list(keys)
        return Response(status_code=200)

    # ---------------------------------------------------------------- testbed

    @app.get("/api/sites/details")
    async def sites_details(u: User = Auth) -> dict[str, Any]:
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

    @app.get("/api/nodes")
    async def nodes(request: Request, u: User = Auth) -> dict[str, Any]:
        return {"items": site.nodes_json(**_selections(request))}

    @app.get("/api/nodes/ids")
    async def nodes_ids(request: Request, u: User = Auth) -> dict[str, Any]:
        groups: dict[tuple[str, str], list[int]] = {}
        for item in site.nodes_json(**_selections(request)):
            number = int(item["network_address"].split(".", 1)[0].rsplit("-", 1)[1])
            groups.setdefault((item["site"], item["archi"]), []).append(number)
        return {
            "items": [
                {"site": s, "archi": a, "nodes_ids": ids_string(ids)}
                for (s, a), ids in sorted(groups.items())
            ]
        }

    # ---------------------------------------------------------------- experiments

    @app.post("/api/experiments")
    async def submit(request: Request, u: User = Auth) -> dict[str, Any]:
        files = await _multipart(request)
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

    @app.get("/api/experiments")
    async def my_experiments(
        u: User = Auth, state: str = "", limit: int = 0, offset: int = 0
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

    @app.get("/api/experiments/running")
    async def running(u: User = Auth) -> dict[str, Any]:
        active = sorted((e for e in site.experiments.values() if e.state in ACTIVE), key=lambda e: e.id)
        return {"items": [{**e.summary(), "nodes": list(e.nodes)} for e in active]}

    @app.get("/api/experiments/{exp_id}")
    async def experiment(exp_id: int, u: User = Auth) -> dict[str, Any]:
        return site.owned(u.login, exp_id).as_json()

    @app.get("/api/experiments/{exp_id}/nodes")
    async def experiment_nodes(exp_id: int, u: User = Auth) -> dict[str, Any]:
        exp = site.owned(u.login, exp_id)
        return {"items": [n for n in site.nodes_json() if n["network_address"] in exp.nodes]}

    @app.get("/api/experiments/{exp_id}/nodes_ids")
    async def experiment_nodes_ids(exp_id: int, u: User = Auth) -> dict[str, Any]:
        exp = site.owned(u.login, exp_id)
        numbers = [int(a.split(".", 1)[0].rsplit("-", 1)[1]) for a in exp.nodes]
        return {"items": [{"site": site.name, "nodes_ids": ids_string(numbers)}]}

    @app.get("/api/experiments/{exp_id}/deployment")
    async def deployment(exp_id: int, u: User = Auth) -> dict[str, Any]:
        return dict(site.owned(u.login, exp_id).deployment)

    @app.get("/api/experiments/{exp_id}/data")
    async def data(exp_id: int, u: User = Auth) -> Response:
        return Response(
            site.archive(u.login, exp_id),
            media_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{exp_id}.tar.gz"'},
        )

    @app.delete("/api/experiments/{exp_id}")
    async def stop(exp_id: int, u: User = Auth) -> dict[str, Any]:
        return site.stop(u.login, exp_id)

    @app.post("/api/experiments/{exp_id}/reload")
    async def reload(exp_id: int, body: Any = Body(None), u: User = Auth) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        return {"id": site.reload(u.login, exp_id, body.get("duration"), body.get("reservation"))}

    @app.post("/api/experiments/{exp_id}/nodes/flash")
    @app.post("/api/experiments/{exp_id}/nodes/flash/binary")
    async def flash(exp_id: int, request: Request, u: User = Auth) -> dict[str, Any]:
        files = await _multipart(request)
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

    @app.post("/api/experiments/{exp_id}/nodes/monitoring/{profile}")
    async def set_profile(
        exp_id: int, profile: str, body: Any = Body(None), u: User = Auth
    ) -> dict[str, Any]:
        if profile not in u.profiles:
            raise ApiError(500, f"Unknown monitoring profile: {profile}")
        return site.node_command(u.login, exp_id, "monitoring", body if body is not None else [])

    @app.post("/api/experiments/{exp_id}/nodes/{command}")
    async def node_command(
        exp_id: int, command: str, body: Any = Body(None), u: User = Auth
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
        return site.node_command(u.login, exp_id, command, body if body is not None else [])

    # ---------------------------------------------------------------- monitoring profiles

    @app.get("/api/monitoring")
    async def profiles(u: User = Auth, archi: str | None = None) -> list[dict[str, Any]]:
        return site.profiles(u.login, archi)

    @app.post("/api/monitoring")
    async def add_profile(body: Any = Body(None), u: User = Auth) -> dict[str, Any]:
        return site.add_profile(u.login, body)

    @app.get("/api/monitoring/{name}")
    async def get_profile(name: str, u: User = Auth) -> dict[str, Any]:
        if name not in u.profiles:
            raise ApiError(404, f"Profile {name!r} not found")
        return u.profiles[name]

    @app.delete("/api/monitoring/{name}")
    async def del_profile(name: str, u: User = Auth) -> Response:
        if u.profiles.pop(name, None) is None:
            raise ApiError(404, f"Profile {name!r} not found")
        return Response(status_code=204)

    # ---------------------------------------------------------------- emulator controls

    @app.get("/_sim/faults")
    async def get_faults() -> dict[str, Any]:
        return site.faults.as_json()

    @app.post("/_sim/faults")
    async def set_faults(body: FaultsIn) -> dict[str, Any]:
        for key, value in body.model_dump(exclude_none=True).items():
            setattr(site.faults, key, value)
        return site.faults.as_json()

    @app.post("/_sim/experiments")
    async def foreign_experiment(body: ForeignExperiment) -> dict[str, Any]:
        """An experiment of a user who is not in the users file (someone else on the testbed)."""
        site.users.setdefault(body.user, User(login=body.user, password=""))
        desc = {"type": "physical", **body.model_dump(exclude={"user"})}
        return {"id": site.submit(body.user, desc, {})}

    @app.post("/_sim/nodes/{address}")
    async def node_state(address: str, body: NodeStateIn) -> dict[str, Any]:
        if address not in site.nodes:
            raise ApiError(404, f"Unknown node {address}")
        if body.state not in NODE_STATES or body.state == "Busy":
            raise ApiError(400, f"state must be one of {[s for s in NODE_STATES if s != 'Busy']}")
        site.nodes[address].state = body.state
        return {"network_address": address, "state": body.state}

    @app.get("/_sim/state")
    async def sim_state() -> dict[str, Any]:
        site.advance()
        return {
            "site": site.name,
            "time_scale": site.time_scale,
            "faults": site.faults.as_json(),
            "nodes": site.nodes_json(),
            "experiments": [e.as_json() for e in sorted(site.experiments.values(), key=lambda e: e.id)],
        }

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _multipart(request: Request) -> dict[str, bytes]:
    """The parts of a multipart body by name (iotlabcli names each part after its file)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "Expected a multipart/form-data body")
    form = await request.form(max_files=64, max_fields=64, max_part_size=MAX_PART_BYTES)
    parts: dict[str, bytes] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            parts[key] = await value.read()
        else:
            parts[key] = value.encode()
    return parts
