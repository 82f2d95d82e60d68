"""What the emulated IoT-LAB routes share (app.py, experiment_routes.py): the site as a dependency,
HTTP basic auth against its users, the testbed's error format, and multipart bodies."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from piseduce.sim.iotlab.extras import AssociationError
from piseduce.sim.iotlab.model import Site
from piseduce.sim.iotlab.records import ApiError, User

MAX_PART_BYTES = 16 * 1024 * 1024
# A 1×1 grey PNG: the emulated robots' map (all free space).
MAP_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63f80f00010101001b1a3fa90000000049454e44ae426082"
)


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=code, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="IoT-LAB"'} if exc.code == 401 else None
    return _error(exc.code, exc.message, headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(400, f"Invalid request: {where}: {first.get('msg', 'bad value')}")


ERROR_HANDLERS: tuple[tuple[type[Exception], Any], ...] = (
    (ApiError, _api_error),
    (StarletteHTTPException, _http_error),
    (RequestValidationError, _invalid),
)


def get_site(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


SiteDep = Annotated[Site, Depends(get_site)]


async def user(request: Request, site: SiteDep) -> User:
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


Auth = Depends(user)


def associated(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A script request, with the testbed's 400 for a bad site or association."""
    try:
        return call()
    except AssociationError as exc:
        raise ApiError(400, str(exc)) from None


async def multipart(request: Request) -> dict[str, bytes]:
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
