"""Admin routes of a raspberry agent for its environments, the OS images of env_path (under
`/api/admin`): register, change, remove, choose the default, and scan the folder's sidecars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from piseduce.agent.auth import admin
from piseduce.agent.drivers.raspberry import raw_cache
from piseduce.agent.drivers.raspberry.admin_schemas import (
    ERRORS,
    EnvironmentIn,
    NameParam,
    Rpi,
    env_out,
    row_to_save,
)
from piseduce.agent.drivers.raspberry.defaults import default_environment
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.imaging import image_path, sha256_file
from piseduce.agent.lifecycle import ACTIVE_STATUSES
from piseduce.agent.models import Environment, Reservation
from piseduce.db import write_session
from piseduce.private_files import owner_only
from piseduce.protocol import Deleted, EnvironmentOut, ScanOut

router = APIRouter(tags=["admin: raspberry"], dependencies=[Depends(admin)], responses=ERRORS)


def image(env_dir: Path, name: str) -> Path:
    try:
        path = image_path(env_dir, name)
    except ValueError as exc:
        raise HTTPException(422, f"image: {exc}") from None
    if not path.is_file():
        raise HTTPException(422, f"image: no file {name!r} in env_path")
    return path


def environments(driver: RaspberryDriver) -> list[EnvironmentOut]:
    with driver.sessions() as s:
        rows = list(s.scalars(select(Environment).order_by(Environment.name)))
        chosen = default_environment(rows)
        return [env_out(r, chosen.name if chosen else None) for r in rows]


def set_default(driver: RaspberryDriver, name: str, on: bool) -> EnvironmentOut:
    with write_session(driver.sessions) as s:
        row = s.get(Environment, name)
        if row is None:
            raise HTTPException(404, f"environment {name} not found")
        if on and row.owner:
            raise HTTPException(409, f"environment {name} is private to {row.owner}: only a public "
                                     "environment can be everyone's default")
        if on and row.state != "available":
            raise HTTPException(409, f"environment {name} is disabled: make it available first")
        if on:
            for other in s.scalars(select(Environment).where(Environment.is_default.is_(True))):
                other.is_default = False
        row.is_default = on
        s.flush()
    return next(e for e in environments(driver) if e.name == name)


def save_env(
    driver: RaspberryDriver, body: EnvironmentIn, create: bool, name: str | None = None
) -> EnvironmentOut:
    env_dir = driver.config.env_dir
    path = image(env_dir, body.image)
    if body.owner:
        owner_only(path)  # a private environment's image is its owner's, through the agent only
    rel = str(path.relative_to(env_dir.resolve()))
    checksum = body.checksum.lower() or sha256_file(path)
    with write_session(driver.sessions) as s:
        row = row_to_save(s, Environment, "environment", body.name, create, name)
        row.image, row.size, row.sector_start = rel, body.size, body.sector_start
        row.ssh_user = body.ssh_user
        row.web, row.checksum, row.description = body.web, checksum, body.description
        row.state, row.owner = body.state, body.owner
        # A default that became private or disabled is no longer anyone's default.
        row.is_default = row.is_default and not row.owner and row.state == "available"
        s.flush()
        out = env_out(row)
    prune_raw_cache(driver)  # a replaced image's raw copy is stale
    return out


def prune_raw_cache(driver: RaspberryDriver) -> None:
    """Drop the raw copies (raw_cache.py) of images no environment names any more."""
    with driver.sessions() as s:
        wanted = {c for c in s.scalars(select(Environment.checksum)) if c}
    raw_cache.prune(raw_cache.folder_of(driver.config.raw_cache_dir), wanted)


def _in_use(s: Any, name: str) -> list[str]:
    rows = s.scalars(select(Reservation).where(Reservation.status.in_(ACTIVE_STATUSES)))
    return [r.node_name for r in rows if (r.params or {}).get("environment") == name]


def delete_env(driver: RaspberryDriver, name: str) -> dict[str, str]:
    with write_session(driver.sessions) as s:
        row = s.get(Environment, name)
        if row is None:
            raise HTTPException(404, f"environment {name} not found")
        used = _in_use(s, name)
        if used:
            raise HTTPException(409, f"environment {name} is in use on {', '.join(sorted(set(used)))}")
        s.delete(row)
    prune_raw_cache(driver)
    # The image file stays: an environment row describes a file, it does not own it.
    return {"name": name, "result": "deleted"}


def scan(driver: RaspberryDriver) -> ScanOut:
    env_dir = driver.config.env_dir
    out = ScanOut(added=[], updated=[], skipped={})
    if not env_dir.is_dir():
        raise HTTPException(409, f"env_path {env_dir} does not exist")
    for sidecar in sorted(env_dir.glob("*.json")):
        try:
            data = json.loads(sidecar.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            fields = {k: data[k] for k in EnvironmentIn.model_fields if k in data}
            body = EnvironmentIn.model_validate(fields)
            with driver.sessions() as s:
                exists = s.get(Environment, body.name) is not None
            save_env(driver, body, not exists, body.name)
        except HTTPException as exc:
            out.skipped[sidecar.name] = str(exc.detail)
            continue
        except (ValueError, OSError) as exc:
            out.skipped[sidecar.name] = str(exc).splitlines()[0][:300]
            continue
        (out.updated if exists else out.added).append(body.name)
    return out


@router.get("/environments", response_model=list[EnvironmentOut])
async def list_environments(driver: Rpi) -> list[EnvironmentOut]:
    return await run_in_threadpool(environments, driver)


@router.post("/environments", status_code=201, response_model=EnvironmentOut)
async def add_environment(body: EnvironmentIn, driver: Rpi) -> EnvironmentOut:
    """Register an image file of env_path (its sha256 is computed when not given)."""
    return await run_in_threadpool(save_env, driver, body, True)


@router.get("/environments/{name}", response_model=EnvironmentOut)
async def get_environment(name: NameParam, driver: Rpi) -> EnvironmentOut:
    for env in await run_in_threadpool(environments, driver):
        if env.name == name:
            return env
    raise HTTPException(404, f"environment {name} not found")


@router.post("/environments/{name}/default", response_model=EnvironmentOut)
async def set_default_environment(name: NameParam, driver: Rpi) -> EnvironmentOut:
    """Make this public environment the one every deploy form preselects (409 for a private or
    disabled one). Without a default, forms preselect the newest public environment."""
    return await run_in_threadpool(set_default, driver, name, True)


@router.delete("/environments/{name}/default", response_model=EnvironmentOut)
async def unset_default_environment(name: NameParam, driver: Rpi) -> EnvironmentOut:
    """This environment is no longer the default (forms fall back to the newest public one)."""
    return await run_in_threadpool(set_default, driver, name, False)


@router.put("/environments/{name}", response_model=EnvironmentOut)
async def update_environment(name: NameParam, body: EnvironmentIn, driver: Rpi) -> EnvironmentOut:
    return await run_in_threadpool(save_env, driver, body, False, name)


@router.delete("/environments/{name}", response_model=Deleted)
async def delete_environment(name: NameParam, driver: Rpi) -> dict[str, str]:
    return await run_in_threadpool(delete_env, driver, name)


@router.post("/environments/scan", response_model=ScanOut)
async def scan_environments(driver: Rpi) -> ScanOut:
    """Register every image of env_path described by a sidecar JSON file (`<image>.json`, as
    written by the image builder: name, image, size, sector_start, ssh_user, checksum)."""
    return await run_in_threadpool(scan, driver)
