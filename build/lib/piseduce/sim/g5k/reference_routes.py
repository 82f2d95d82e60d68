"""Routes of the other reference collections python-grid5000 exposes: a site's servers, PDUs,
network equipments, VLANs and versions (each a collection and its items), the root's network
equipments and versions, and the versions of a cluster or a node."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from piseduce.sim.g5k.model import G5kSim
from piseduce.sim.g5k.records import SimError

KINDS = ("servers", "pdus", "network_equipments", "vlans", "versions")
Handler = Callable[[Request], Awaitable[Response]]


def reference_routes(
    sim_of: Callable[[Request], G5kSim],
    site_of: Callable[[Request], str],
    collection: Callable[..., Response],
    item: Callable[..., Response],
    links: Callable[[str, str | None], list[dict[str, str]]],
) -> list[Route]:
    """The routes, built on the app's own response helpers (media types, links, collections)."""

    def listing(kind: str, scope: Callable[[Request], str]) -> Handler:
        async def handler(request: Request) -> Response:
            base = scope(request)
            items = [{**i, "links": links(f"{base}/{kind}/{i['uid']}", base)} for i in _items(request, kind)]
            return collection(request, items, base)

        return handler

    def one(kind: str, scope: Callable[[Request], str]) -> Handler:
        async def handler(request: Request) -> Response:
            uid = request.path_params["uid"]
            for i in _items(request, kind):
                if str(i["uid"]) == uid:
                    return item(request, i, scope(request))
            raise SimError(404, f"Couldn't find {kind.rstrip('s').replace('_', ' ')} {uid}")

        return handler

    def _items(request: Request, kind: str) -> list[dict[str, Any]]:
        if "site" in request.path_params:
            site_of(request)
        if "cluster" in request.path_params:
            sim_of(request).cluster_item(request.path_params["cluster"])
        return sim_of(request).reference_items(kind)

    def site_scope(request: Request) -> str:
        return f"{request.scope.get('g5k_prefix', '/stable')}/sites/{request.path_params['site']}"

    def root_scope(request: Request) -> str:
        return str(request.scope.get("g5k_prefix", "/stable"))

    def cluster_scope(request: Request) -> str:
        return f"{site_scope(request)}/clusters/{request.path_params['cluster']}"

    def node_scope(request: Request) -> str:
        return f"{cluster_scope(request)}/nodes/{request.path_params['node']}"

    routes = []
    for kind in KINDS:
        routes += [Route(f"/sites/{{site}}/{kind}", listing(kind, site_scope)),
                   Route(f"/sites/{{site}}/{kind}/{{uid}}", one(kind, site_scope))]
    for kind in ("network_equipments", "versions"):
        routes += [Route(f"/{kind}", listing(kind, root_scope)),
                   Route(f"/{kind}/{{uid}}", one(kind, root_scope))]
    routes += [
        Route("/sites/{site}/clusters/{cluster}/versions", listing("versions", cluster_scope)),
        Route("/sites/{site}/clusters/{cluster}/nodes/{node}/versions", listing("versions", node_scope)),
    ]
    return routes
