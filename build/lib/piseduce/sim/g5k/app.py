"""The HTTP face of the emulator: the Grid'5000 API routes (protocols.md §A.2) under `/stable`
(also `/3.0` and `/sid`), HTTP Basic auth, the real media types and collection shapes, errors as
plain text like the real API (web.py, front_door.py), and `/_sim/...` admin routes to steer
faults from tests (sim_routes.py)."""

from __future__ import annotations

import json
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from piseduce.sim.g5k.front_door import G5kFrontDoor, VersionPrefix
from piseduce.sim.g5k.model import G5kSim
from piseduce.sim.g5k.records import SimError
from piseduce.sim.g5k.reference_routes import reference_routes
from piseduce.sim.g5k.sim_routes import sim_faults, sim_foreign_job, sim_health, sim_node
from piseduce.sim.g5k.web import (
    COLLECTION,
    ITEM,
    collection,
    error_response,
    item,
    json_response,
    link_list,
    read_payload,
    sim_of,
    site_of,
    site_path,
    user_of,
    version_prefix,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- reference routes


async def root(request: Request) -> Response:
    p = version_prefix(request)
    data = {
        "uid": p.rsplit("/", 1)[-1] or "stable",
        "type": "grid",
        "release": "3.0",
        "timestamp": int(sim_of(request).now()),
    }
    resp = item(request, data, None, href=p)
    body = json.loads(bytes(resp.body))
    body["links"].append({"rel": "sites", "href": f"{p}/sites", "type": COLLECTION})
    return json_response(request, body, ITEM)


async def sites(request: Request) -> Response:
    sim = sim_of(request)
    p = version_prefix(request)
    it = {**sim.site_item(), "links": link_list(f"{p}/sites/{sim.site}", p)}
    return collection(request, [it], p)


async def site(request: Request) -> Response:
    s = site_of(request)
    p = version_prefix(request)
    data = sim_of(request).site_item()
    resp = item(request, data, p)
    body = json.loads(bytes(resp.body))
    for rel in ("clusters", "jobs", "deployments", "environments", "status", "servers", "pdus",
                "network_equipments", "vlans", "versions"):
        kind = ITEM if rel == "status" else COLLECTION
        body["links"].append({"rel": rel, "href": f"{p}/sites/{s}/{rel}", "type": kind})
    return json_response(request, body, ITEM)


async def clusters(request: Request) -> Response:
    site_of(request)
    sim = sim_of(request)
    base = site_path(request)
    items = [{**sim.cluster_item(c), "links": link_list(f"{base}/clusters/{c}", base)} for c in sim.clusters]
    return collection(request, items, base)


async def cluster(request: Request) -> Response:
    site_of(request)
    return item(request, sim_of(request).cluster_item(request.path_params["cluster"]), site_path(request))


async def nodes(request: Request) -> Response:
    site_of(request)
    c = request.path_params["cluster"]
    base = f"{site_path(request)}/clusters/{c}"
    found = sim_of(request).node_items(c)
    items = [{**n, "links": link_list(f"{base}/nodes/{n['uid']}", base)} for n in found]
    return collection(request, items, base)


async def node(request: Request) -> Response:
    site_of(request)
    c = request.path_params["cluster"]
    uid = request.path_params["node"]
    for n in sim_of(request).node_items(c):
        if n["uid"] == uid:
            return item(request, n, f"{site_path(request)}/clusters/{c}")
    raise SimError(404, f"Couldn't find node {uid}")


def _status(request: Request, cluster: str | None) -> Response:
    site_of(request)
    q = request.query_params
    data = sim_of(request).status(
        cluster=cluster, details=q.get("job_details", "yes") != "no", waiting=q.get("waiting", "yes") != "no"
    )
    if q.get("disks", "yes") == "no":
        data.pop("disks", None)
    if q.get("network_address"):
        data["nodes"] = {k: v for k, v in data["nodes"].items() if k == q["network_address"]}
    parent = site_path(request) + (f"/clusters/{cluster}" if cluster else "")
    return item(request, data, parent)


async def site_status(request: Request) -> Response:
    return _status(request, None)


async def cluster_status(request: Request) -> Response:
    c = request.path_params["cluster"]
    sim_of(request).cluster_item(c)
    return _status(request, c)


async def environments(request: Request) -> Response:
    site_of(request)
    base = site_path(request)
    items = [
        {**e, "links": link_list(f"{base}/environments/{e['uid']}", base)}
        for e in sim_of(request).environment_items(dict(request.query_params))
    ]
    return collection(request, items, base)


async def environment(request: Request) -> Response:
    site_of(request)
    uid = request.path_params["env"]
    for e in sim_of(request).environments:
        if e["uid"] == uid:
            return item(request, e, site_path(request))
    raise SimError(404, f"Couldn't find environment {uid}")


# ---------------------------------------------------------------- jobs


async def jobs(request: Request) -> Response:
    site_of(request)
    sim = sim_of(request)
    base = site_path(request)
    if request.method == "POST":
        payload = await read_payload(request)
        job = sim.submit_job(user_of(request), payload)
        href = f"{base}/jobs/{job.uid}"
        with sim.lock:
            data = sim.job_item(job, details=True)
        log.info("job %s submitted by %s on %s", job.uid, job.user, ",".join(job.hosts))
        return item(
            request,
            data,
            base,
            status=201,
            headers={"Location": str(request.base_url).rstrip("/") + href},
            href=href,
        )
    q = dict(request.query_params)
    details = q.get("resources") == "yes"
    with sim.lock:
        found = sim.list_jobs(q)
        items = [
            {**sim.job_item(j, details=details), "links": link_list(f"{base}/jobs/{j.uid}", base)}
            for j in found
        ]
    return collection(request, items, base, paginate=True)


async def job(request: Request) -> Response:
    site_of(request)
    sim = sim_of(request)
    base = site_path(request)
    uid = request.path_params["job"]
    if request.method == "DELETE":
        j = sim.delete_job(user_of(request), uid)
        log.info("job %s deleted by %s", j.uid, j.user)
        href = str(request.base_url).rstrip("/") + f"{base}/jobs/{j.uid}"
        return PlainTextResponse(
            "",
            status_code=202,
            headers={
                "Location": href,
                "X-Oar-Info": f"Deleting the job = {j.uid} ...REGISTERED. "
                f"The job(s) [ {j.uid} ] will be deleted in the near future.",
            },
        )
    with sim.lock:
        data = sim.job_item(sim.get_job(uid), details=True)
    return item(request, data, base)


async def walltime(request: Request) -> Response:
    site_of(request)
    sim = sim_of(request)
    uid = request.path_params["job"]
    parent = f"{site_path(request)}/jobs/{uid}"
    if request.method == "POST":
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/json":
            # The real controller insists on exactly this content type.
            raise SimError(500, f"Unsupported Media Type {ctype or '(none)'}")
        result = sim.change_walltime(user_of(request), uid, await read_payload(request))
        log.info("walltime of job %s changed by %s: %s", uid, user_of(request), result["walltime"])
        return json_response(
            request,
            result,
            ITEM,
            status=202,
            headers={"Location": str(request.base_url).rstrip("/") + parent + "/walltime"},
        )
    return item(request, sim.walltime_item(uid), parent)


# ---------------------------------------------------------------- deployments


async def deployments(request: Request) -> Response:
    site_of(request)
    sim = sim_of(request)
    base = site_path(request)
    if request.method == "POST":
        payload = await read_payload(request)
        dep = sim.submit_deployment(
            user_of(request), payload, f"{str(request.base_url).rstrip('/')}{base}/files"
        )
        href = f"{base}/deployments/{dep.uid}"
        with sim.lock:
            data = sim.deployment_item(dep)
        log.info("deployment %s of %s by %s", dep.uid, dep.environment, dep.user)
        return item(
            request,
            data,
            base,
            status=201,
            href=href,
            headers={"Location": str(request.base_url).rstrip("/") + href},
        )
    with sim.lock:
        found = sim.list_deployments(dict(request.query_params))
        items = [
            {**sim.deployment_item(d), "links": link_list(f"{base}/deployments/{d.uid}", base)} for d in found
        ]
    return collection(request, items, base, paginate=True)


async def deployment(request: Request) -> Response:
    site_of(request)
    sim = sim_of(request)
    uid = request.path_params["dep"]
    href = str(request.base_url).rstrip("/") + f"{site_path(request)}/deployments/{uid}"
    if request.method == "DELETE":
        sim.cancel_deployment(user_of(request), uid)
        return PlainTextResponse("", status_code=202, headers={"Location": href})
    if request.method == "PUT":
        sim.get_deployment(uid)
        return Response(status_code=204, headers={"Location": href})
    with sim.lock:
        data = sim.deployment_item(sim.get_deployment(uid))
    return item(request, data, site_path(request))


async def stored_file(request: Request) -> Response:
    site_of(request)
    content = sim_of(request).file(user_of(request), request.path_params["name"])
    return PlainTextResponse(content)


# ---------------------------------------------------------------- the app


def _api_routes() -> list[Route]:
    s = "/sites/{site}"
    return [
        Route("/", root),
        Route("/sites", sites),
        Route(s, site),
        Route(f"{s}/clusters", clusters),
        Route(f"{s}/clusters/{{cluster}}", cluster),
        Route(f"{s}/clusters/{{cluster}}/nodes", nodes),
        Route(f"{s}/clusters/{{cluster}}/nodes/{{node}}", node),
        Route(f"{s}/clusters/{{cluster}}/status", cluster_status),
        Route(f"{s}/status", site_status),
        Route(f"{s}/environments", environments),
        Route(f"{s}/environments/{{env}}", environment),
        Route(f"{s}/jobs", jobs, methods=["GET", "POST"]),
        Route(f"{s}/jobs/{{job}}", job, methods=["GET", "DELETE"]),
        Route(f"{s}/jobs/{{job}}/walltime", walltime, methods=["GET", "POST"]),
        Route(f"{s}/deployments", deployments, methods=["GET", "POST"]),
        Route(f"{s}/deployments/{{dep}}", deployment, methods=["GET", "PUT", "DELETE"]),
        Route(f"{s}/files/{{name}}", stored_file),
        *reference_routes(sim_of, site_of, collection, item, link_list),
    ]


def create_app(sim: G5kSim) -> ASGIApp:
    api = Starlette(routes=_api_routes())

    async def _sim_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SimError)
        return error_response(exc)

    routes: list[Route | Mount] = [
        Route("/_sim/health", sim_health),
        Route("/_sim/faults", sim_faults, methods=["GET", "POST"]),
        Route("/_sim/jobs", sim_foreign_job, methods=["POST"]),
        Route("/_sim/nodes/{node}", sim_node, methods=["POST"]),
    ]
    for prefix in ("/stable", "/3.0", "/sid"):
        routes.append(Mount(prefix, app=VersionPrefix(api, prefix)))
    app = Starlette(routes=routes, exception_handlers={SimError: _sim_error})
    app.state.sim = sim
    api.state.sim = sim
    api.add_exception_handler(SimError, _sim_error)
    return G5kFrontDoor(app, sim)
