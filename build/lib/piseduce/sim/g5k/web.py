"""The emulated API's HTTP manners: its media types, items and (paginated) collections with their
links, plain-text errors, and what a route reads from its request (the site, the user the front
door authenticated, a JSON or form body)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from piseduce.sim.g5k.model import G5kSim
from piseduce.sim.g5k.records import SimError

ITEM = "application/vnd.grid5000.item+json"
COLLECTION = "application/vnd.grid5000.collection+json"
LIMIT, LIMIT_MAX = 50, 500


def version_prefix(request: Request) -> str:
    return str(request.scope.get("g5k_prefix", "/stable"))


def media_type(request: Request, vendor: str) -> str:
    accept = request.headers.get("accept", "")
    first = accept.split(",")[0].split(";")[0].strip()
    if first in (ITEM, COLLECTION):
        return first
    # python-grid5000 asks for application/json and checks for it in Content-Type.
    return "application/json; charset=utf-8" if first in ("application/json", "*/*", "") else vendor


def json_response(
    request: Request, data: Any, vendor: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(data).encode()
    hdrs = {"Vary": "accept", **(headers or {})}
    return Response(body, status_code=status, media_type=media_type(request, vendor), headers=hdrs)


def link_list(self_href: str, parent_href: str | None, kind: str = ITEM) -> list[dict[str, str]]:
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
    return json_response(request, {**data, "links": link_list(href, parent)}, ITEM, status, headers)


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
        "links": link_list(request.url.path, parent, COLLECTION),
    }
    return json_response(request, data, COLLECTION)


def error_response(exc: SimError) -> Response:
    return PlainTextResponse(exc.message, status_code=exc.status)


def sim_of(request: Request) -> G5kSim:
    sim: G5kSim = request.app.state.sim
    return sim


def user_of(request: Request) -> str:
    user: str = request.scope["g5k_user"]
    return user


def site_of(request: Request) -> str:
    site = request.path_params["site"]
    if site != sim_of(request).site:
        raise SimError(404, f"Couldn't find site {site}")
    return str(site)


async def read_payload(request: Request) -> dict[str, Any]:
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


def site_path(request: Request) -> str:
    return f"{version_prefix(request)}/sites/{request.path_params['site']}"
