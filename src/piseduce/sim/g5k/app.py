"""The HTTP face of the emulator: the Grid'5000 API routes (protocols.md §A.2) under `/stable`
(also `/3.0` and `/sid`), HTTP Basic auth, the real media types and collection shapes, errors as
plain text like the real API, and `/_sim/...` admin routes to steer faults from tests."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from piseduce.sim.g5k.model import G5kSim, SimError

log = logging.getLogger(__name__)

ITEM = "application/vnd.grid5000.item+json"
COLLECTION = "application/vnd.grid5000.collection+json"
LIMIT, LIMIT_MAX = 50, 500


# ---------------------------------------------------------------- responses


def _prefix(request: Request) -> str:
    return str(request.scope.get("g5k_prefix", "/stable"))


def _media(request: Request, vendor: str) -> str:
    accept = request.headers.get("accept", "")
    first = accept.split(",")[0].split(";")[0].strip()
    if first in (ITEM, COLLECTION):
        return first
    # python-grid5000 asks for application/json and checks for it in Content-Type.
    return "application/json; charset=utf-8" if first in ("application/json", "*/*", "") else vendor


def _json(
    request: Request, data: Any, vendor: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(data).encode()
    hdrs = {"Vary": "accept", **(headers or {})}
    return Response(body, status_code=status, media_type=_media(request, vendor), headers=hdrs)


def _links(self_href: str, parent_href: str | None, kind: str = ITEM) -> list[dict[str, str]]:
    links = [{"rel": "self", "href": self_href, "type": kind}]
    if parent_href is not None:
        links.append({"rel": "parent", "href": parent_href, "type": ITEM})
    return links


def item(
    request: Request,
    data: dict[str, Any],
    parent: str | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    href: str | None = None,
) -> Response:
    href = href or request.url.path
    return _json(request, {**data, "links": _links(href, parent)}, ITEM, status, headers)


def collection(
    request: Request, items: list[dict[str, Any]], parent: str | None, *, paginate: bool = False
) -> Response:
    total = len(items)
    offset = 0
    if paginate:
        try:
            offset = max(int(request.query_params.get("offset", 0)), 0)
            limit = min(int(request.query_params.get("limit", LIMIT)), LIMIT_MAX)
        except ValueError:
            raise SimError(400, "offset and limit must be integers") from None
        items = items[offset : offset + max(limit, 0)]
    data = {
        "total": total,
        "offset": offset,
        "items": items,
        "links": _links(request.url.path, parent, COLLECTION),
    }
    return _json(request, data, COLLECTION)


def _error(exc: SimError) -> Response:
    return PlainTextResponse(exc.message, status_code=exc.status)


# ---------------------------------------------------------------- request helpers


def _sim(request: Request) -> G5kSim:
    sim: G5kSim = request.app.state.sim
    return sim


def _user(request: Request) -> str:
    user: str = request.scope["g5k_user"]
    return user


def _site(request: Request) -> str:
    site = request.path_params["site"]
    if site != _sim(request).site:
        raise SimError(404, f"Couldn't find site {site}")
    return str(site)


async def _payload(request: Request) -> dict[str, Any]:
    raw = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if not raw:
        return {}
    if ctype.endswith("json") or ctype == "":
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise SimError(400, "The request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise SimError(400, "The request body must be a JSON object")
        return data
    if ctype == "application/x-www-form-urlencoded":
        out: dict[str, Any] = {}
        for k, v in parse_qsl(raw.decode(), keep_blank_values=True):
            if k.endswith("[]"):
                out.setdefault(k[:-2], []).append(v)
            else:
                out[k] = v
        return out
    raise SimError(415, f"Unsupported Media Type {ctype}")


def _site_path(request: Request) -> str:
    return f"{_prefix(request)}/sites/{request.path_params['site']}"


# ---------------------------------------------------------------- reference routes


async def root(request: Request) -> Response:
    p = _prefix(request)
    data = {
        "uid": p.rsplit("/", 1)[-1] or "stable",
        "type": "grid",
        "release": "3.0",
        "timestamp": int(_sim(request).now()),
    }
    resp = item(request, data, None, href=p)
    body = json.loads(bytes(resp.body))
    body["links"].append({"rel": "sites", "href": f"{p}/sites", "type": COLLECTION})
    return _json(request, body, ITEM)


async def sites(request: Request) -> Response:
    sim = _sim(request)
    p = _prefix(request)
    it = {**sim.site_item(), "links": _links(f"{p}/sites/{sim.site}", p)}
    return collection(request, [it], p)


async def site(request: Request) -> Response:
    s = _site(request)
    p = _prefix(request)
    data = _sim(request).site_item()
    resp = item(request, data, p)
    body = json.loads(bytes(resp.body))
    for rel in ("clusters", "jobs", "deployments", "environments", "status"):
        kind = ITEM if rel == "status" else COLLECTION
        body["links"].append({"rel": rel, "href": f"{p}/sites/{s}/{rel}", "type": kind})
    return _json(request, body, ITEM)


async def clusters(request: Request) -> Response:
    _site(request)
    sim = _sim(request)
    base = _site_path(request)
    items = [{**sim.cluster_item(c), "links": _links(f"{base}/clusters/{c}", base)} for c in sim.clusters]
    return collection(request, items, base)


async def cluster(request: Request) -> Response:
    _site(request)
    return item(request, _sim(request).cluster_item(request.path_params["cluster"]), _site_path(request))


async def nodes(request: Request) -> Response:
    _site(request)
    c = request.path_params["cluster"]
    base = f"{_site_path(request)}/clusters/{c}"
    items = [{**n, "links": _links(f"{base}/nodes/{n['uid']}", base)} for n in _sim(request).node_items(c)]
    return collection(request, items, base)


async def node(request: Request) -> Response:
    _site(request)
    c = request.path_params["cluster"]
    uid = request.path_params["node"]
    for n in _sim(request).node_items(c):
        if n["uid"] == uid:
            return item(request, n, f"{_site_path(request)}/clusters/{c}")
    raise SimError(404, f"Couldn't find node {uid}")


def _status(request: Request, cluster: str | None) -> Response:
    _site(request)
    q = request.query_params
    data = _sim(request).status(
        cluster=cluster, details=q.get("job_details", "yes") != "no", waiting=q.get("waiting", "yes") != "no"
    )
    if q.get("disks", "yes") == "no":
        data.pop("disks", None)
    if q.get("network_address"):
        data["nodes"] = {k: v for k, v in data["nodes"].items() if k == q["network_address"]}
    parent = _site_path(request) + (f"/clusters/{cluster}" if cluster else "")
    return item(request, data, parent)


async def site_status(request: Request) -> Response:
    return _status(request, None)


async def cluster_status(request: Request) -> Response:
    c = request.path_params["cluster"]
    _sim(request).cluster_item(c)
    return _status(request, c)


async def environments(request: Request) -> Response:
    _site(request)
    base = _site_path(request)
    items = [
        {**e, "links": _links(f"{base}/environments/{e['uid']}", base)}
        for e in _sim(request).environment_items(dict(request.query_params))
    ]
    return collection(request, items, base)


async def environment(request: Request) -> Response:
    _site(request)
    uid = request.path_params["env"]
    for e in _sim(request).environments:
        if e["uid"] == uid:
            return item(request, e, _site_path(request))
    raise SimError(404, f"Couldn't find environment {uid}")


# ---------------------------------------------------------------- jobs


async def jobs(request: Request) -> Response:
    _site(request)
    sim = _sim(request)
    base = _site_path(request)
    if request.method == "POST":
        payload = await _payload(request)
        job = sim.submit_job(_user(request), payload)
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
            {**sim.job_item(j, details=details), "links": _links(f"{base}/jobs/{j.uid}", base)} for j in found
        ]
    return collection(request, items, base, paginate=True)


async def job(request: Request) -> Response:
    _site(request)
    sim = _sim(request)
    base = _site_path(request)
    uid = request.path_params["job"]
    if request.method == "DELETE":
        j = sim.delete_job(_user(request), uid)
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
    _site(request)
    sim = _sim(request)
    uid = request.path_params["job"]
    parent = f"{_site_path(request)}/jobs/{uid}"
    if request.method == "POST":
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/json":
            # The real controller insists on exactly this content type.
            raise SimError(500, f"Unsupported Media Type {ctype or '(none)'}")
        result = sim.change_walltime(_user(request), uid, await _payload(request))
        log.info("walltime of job %s changed by %s: %s", uid, _user(request), result["walltime"])
        return _json(
            request,
            result,
            ITEM,
            status=202,
            headers={"Location": str(request.base_url).rstrip("/") + parent + "/walltime"},
        )
    return item(request, sim.walltime_item(uid), parent)


# ---------------------------------------------------------------- deployments


async def deployments(request: Request) -> Response:
    _site(request)
    sim = _sim(request)
    base = _site_path(request)
    if request.method == "POST":
        payload = await _payload(request)
        dep = sim.submit_deployment(
            _user(request), payload, f"{str(request.base_url).rstrip('/')}{base}/files"
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
            {**sim.deployment_item(d), "links": _links(f"{base}/deployments/{d.uid}", base)} for d in found
        ]
    return collection(request, items, base, paginate=True)


async def deployment(request: Request) -> Response:
    _site(request)
    sim = _sim(request)
    uid = request.path_params["dep"]
    href = str(request.base_url).rstrip("/") + f"{_site_path(request)}/deployments/{uid}"
    if request.method == "DELETE":
        sim.cancel_deployment(_user(request), uid)
        return PlainTextResponse("", status_code=202, headers={"Location": href})
    if request.method == "PUT":
        sim.get_deployment(uid)
        return Response(status_code=204, headers={"Location": href})
    with sim.lock:
        data = sim.deployment_item(sim.get_deployment(uid))
    return item(request, data, _site_path(request))


# ---------------------------------------------------------------- admin routes for tests and demos


async def sim_faults(request: Request) -> Response:
    sim = _sim(request)
    if request.method == "POST":
        data = await _payload(request)
        with sim.lock:
            try:
                sim.faults.update(data)
            except (TypeError, ValueError) as exc:
                raise SimError(400, f"bad fault value: {exc}") from None
    return JSONResponse(sim.faults.as_dict())


async def sim_foreign_job(request: Request) -> Response:
    """A job made outside the API (oarsub on the frontend) by any user: `{user, hosts, start?, walltime}`."""
    sim = _sim(request)
    data = await _payload(request)
    try:
        hosts = [str(h) for h in data["hosts"]]
        job = sim.add_foreign_job(
            str(data.get("user", "someone")),
            hosts,
            float(data["start"]) if data.get("start") is not None else None,
            int(data.get("walltime", 3600)),
            str(data.get("name", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SimError(400, f"bad foreign job: {exc}") from None
    with sim.lock:
        return JSONResponse(sim.job_item(job, details=True), status_code=201)


async def sim_node(request: Request) -> Response:
    data = await _payload(request)
    _sim(request).set_node_hard(request.path_params["node"], str(data.get("hard", "alive")))
    return JSONResponse({"ok": True})


async def sim_health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "site": _sim(request).site})


# ---------------------------------------------------------------- middleware: faults, latency, auth


class G5kFrontDoor:
    """What the Grid'5000 proxy does before the API sees a request: Basic auth (401 otherwise),
    plus the emulator's fault knobs (latency, 5xx) and the error mapping."""

    def __init__(self, app: ASGIApp, sim: G5kSim) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        if self.sim.faults.latency:
            await asyncio.sleep(self.sim.faults.latency)
        if self.sim.injected_failure():
            await PlainTextResponse("Service Unavailable (emulated fault)", status_code=503)(
                scope, receive, send
            )
            return
        user = self._authenticate(scope)
        if user is None:
            resp = PlainTextResponse(
                "Authorization Required",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Grid5000 API"'},
            )
            await resp(scope, receive, send)
            return
        scope["g5k_user"] = user
        lost = self.sim.answer_lost()
        target = send
        if lost:

            async def swallow(message: Message) -> None:
                return None

            target = swallow
        try:
            await self.app(scope, receive, target)
        except SimError as exc:
            await _error(exc)(scope, receive, target)
        if lost:
            await PlainTextResponse("Bad Gateway (emulated: the answer was lost)", status_code=502)(
                scope, receive, send
            )

    def _authenticate(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "basic":
                    return None
                try:
                    user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    return None
                if sep and self.sim.authenticate(user, password):
                    return user
                return None
        return None


class _Prefix:
    """Remember which version prefix (/stable, /3.0, /sid) a request came through, for links."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["g5k_prefix"] = self.prefix
        await self.app(scope, receive, send)


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
    ]


def create_app(sim: G5kSim) -> ASGIApp:
    api = Starlette(routes=_api_routes())

    async def _sim_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SimError)
        return _error(exc)

    routes: list[Route | Mount] = [
        Route("/_sim/health", sim_health),
        Route("/_sim/faults", sim_faults, methods=["GET", "POST"]),
        Route("/_sim/jobs", sim_foreign_job, methods=["POST"]),
        Route("/_sim/nodes/{node}", sim_node, methods=["POST"]),
    ]
    for prefix in ("/stable", "/3.0", "/sid"):
        routes.append(Mount(prefix, app=_Prefix(api, prefix)))
    app = Starlette(routes=routes, exception_handlers={SimError: _sim_error})
    app.state.sim = sim
    api.state.sim = sim
    api.add_exception_handler(SimError, _sim_error)
    return G5kFrontDoor(app, sim)
