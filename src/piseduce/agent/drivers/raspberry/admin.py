"""Admin routes of a raspberry agent (mounted by the API under `/api/admin`): PoE switches, their
ports, and the environments (OS images in env_path). Nodes themselves are the API's `/api/admin/nodes`.

The SNMP community is write-only here: it is a password of the switch, never echoed back.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from piseduce.agent.actions import add_event
from piseduce.agent.auth import AdminDep, admin
from piseduce.agent.drivers.raspberry.snmp import MasterPortRefused, SnmpError, SwitchInfo, valid_oid
from piseduce.agent.drivers.raspberry.steps import image_path, sha256_file
from piseduce.agent.models import ACTIVE_STATUSES, Environment, Node, Reservation, Switch
from piseduce.db import write_session

if TYPE_CHECKING:
    from piseduce.agent.drivers.raspberry.driver import RaspberryDriver

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
Name = Annotated[str, Field(pattern=NAME_RE)]
NameParam = Annotated[str, PathParam(pattern=NAME_RE)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong agent token"},
    403: {"description": "Administrators only"},
    404: {"description": "Not found"},
    409: {"description": "Not possible; the detail says why"},
    502: {"description": "The switch did not answer"},
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SwitchIn(Strict):
    name: Name
    ip: str = Field(max_length=253)
    snmp_port: int = Field(default=161, ge=1, le=65535)
    community: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="The write community; omitted: 'private' for a new switch, unchanged on an update",
    )
    poe_oid: str = Field(default="1.3.6.1.2.1.105.1.1.1.3.1", max_length=255)
    oid_offset: int = Field(default=0, ge=0, le=100_000)
    port_count: int = Field(default=8, ge=1, le=1024)
    power_oid: str = Field(default="", max_length=255)
    power_oid_offset: int = Field(default=0, ge=0, le=100_000)
    master_port: int = Field(default=0, ge=0, le=1024)

    @field_validator("ip")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            if HOST_RE.match(v):
                return v
        raise ValueError("must be an IP address or a host name")

    @field_validator("community")
    @classmethod
    def _community(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("printable characters only")
        return v

    @field_validator("poe_oid")
    @classmethod
    def _poe_oid(cls, v: str) -> str:
        if not valid_oid(v):
            raise ValueError("must be a numeric OID such as 1.3.6.1.2.1.105.1.1.1.3.1")
        return v.strip(".")

    @field_validator("power_oid")
    @classmethod
    def _power_oid(cls, v: str) -> str:
        if v and not valid_oid(v):
            raise ValueError("must be empty or a numeric OID")
        return v.strip(".")

    @model_validator(mode="after")
    def _master(self) -> SwitchIn:
        if self.master_port > self.port_count:
            raise ValueError(f"master_port {self.master_port} is beyond port_count {self.port_count}")
        return self


class SwitchOut(BaseModel):
    name: str
    ip: str
    snmp_port: int
    poe_oid: str
    oid_offset: int
    port_count: int
    power_oid: str
    power_oid_offset: int
    master_port: int
    community_set: bool


class PortOut(BaseModel):
    port: int
    status: Literal["on", "off", "unknown"]
    master: bool = False
    node: str | None = None
    power_w: float | None = None


class EnvironmentIn(Strict):
    name: Name
    image: str = Field(min_length=1, max_length=512)
    size: int = Field(default=0, ge=0)
    sector_start: int = Field(default=0, ge=0)
    ssh_user: str = Field(default="root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    web: bool = False
    checksum: str = Field(default="", pattern=r"^([0-9a-fA-F]{64})?$")
    description: str = Field(default="", max_length=2000)
    state: Literal["available", "disabled"] = "available"
    owner: str = Field(default="", max_length=320)


class EnvironmentOut(BaseModel):
    name: str
    image: str
    size: int
    sector_start: int
    ssh_user: str
    web: bool
    checksum: str
    description: str
    state: str
    owner: str


class ScanOut(BaseModel):
    added: list[str]
    updated: list[str]
    skipped: dict[str, str]


def switch_out(row: Switch) -> SwitchOut:
    return SwitchOut(
        name=row.name, ip=row.ip, snmp_port=row.snmp_port, poe_oid=row.poe_oid, oid_offset=row.oid_offset,
        port_count=row.port_count, power_oid=row.power_oid, power_oid_offset=row.power_oid_offset,
        master_port=row.master_port,
        community_set=bool(row.community),
    )


def env_out(row: Environment) -> EnvironmentOut:
    return EnvironmentOut(
        name=row.name, image=row.image, size=row.size, sector_start=row.sector_start, ssh_user=row.ssh_user,
        web=row.web, checksum=row.checksum, description=row.description, state=row.state, owner=row.owner,
    )


SavedRow = TypeVar("SavedRow", Switch, Environment)


def _row_to_save(
    s: Session, model: type[SavedRow], what: str, new_name: str, create: bool, path_name: str | None
) -> SavedRow:
    """The row a POST creates (409 if the name is taken) or a PUT changes (404 if missing; no renaming)."""
    key = new_name if create else (path_name or new_name)
    row = s.get(model, key)
    if create and row is not None:
        raise HTTPException(409, f"{what} {new_name} already exists")
    if not create:
        if row is None:
            raise HTTPException(404, f"{what} {key} not found")
        if new_name != key:
            raise HTTPException(422, "the name in the body must match the path (no renaming)")
    if row is None:
        row = model(name=new_name)
        s.add(row)
    return row


def make_router(driver: RaspberryDriver) -> APIRouter:
    sessions = driver.sessions
    env_dir: Path = driver.config.env_dir
    router = APIRouter(tags=["admin: raspberry"], dependencies=[Depends(admin)], responses=ERRORS)

    # ------------------------------------------------------------ switches

    def _switches() -> list[SwitchOut]:
        with sessions() as s:
            return [switch_out(r) for r in s.scalars(select(Switch).order_by(Switch.name))]

    def _switch(name: str) -> SwitchInfo:
        with sessions() as s:
            row = s.get(Switch, name)
            if row is None:
                raise HTTPException(404, f"switch {name} not found")
            return SwitchInfo.from_row(row)

    def _save_switch(body: SwitchIn, create: bool, name: str | None = None) -> SwitchOut:
        if not create:
            # A node left on a port the switch no longer has (or on its uplink) could not be powered.
            stranded = {port: node for port, node in _nodes_on(name or body.name).items()
                        if port > body.port_count or port == body.master_port}
            if stranded:
                where = ", ".join(f"{node} (port {port})" for port, node in sorted(stranded.items()))
                raise HTTPException(409, f"{where} would be left outside the switch's ports or on its "
                                         "master port; move them first")
        with write_session(sessions) as s:
            row = _row_to_save(s, Switch, "switch", body.name, create, name)
            for field in ("ip", "snmp_port", "poe_oid", "oid_offset", "port_count", "power_oid",
                          "power_oid_offset", "master_port"):
                setattr(row, field, getattr(body, field))
            # A secret the pages never show: an edit that does not retype it keeps it.
            row.community = body.community if body.community is not None else (row.community or "private")
            s.flush()
            return switch_out(row)

    def _nodes_on(name: str) -> dict[int, str]:
        with sessions() as s:
            out: dict[int, str] = {}
            for n in s.scalars(select(Node).where(Node.present.is_(True))):
                attrs = n.attrs or {}
                if attrs.get("switch") == name and attrs.get("port") not in (None, ""):
                    try:
                        out[int(attrs["port"])] = n.name
                    except (TypeError, ValueError):
                        continue
            return out

    def _delete_switch(name: str) -> dict[str, str]:
        used = _nodes_on(name)
        if used:
            raise HTTPException(409, f"switch {name} powers node(s) {', '.join(sorted(used.values()))}; "
                                     "remove them or move them first")
        with write_session(sessions) as s:
            row = s.get(Switch, name)
            if row is None:
                raise HTTPException(404, f"switch {name} not found")
            s.delete(row)
        return {"name": name, "result": "deleted"}

    @router.get("/switches", response_model=list[SwitchOut])
    async def list_switches() -> list[SwitchOut]:
        """The PoE switches (the SNMP community is never shown)."""
        return await run_in_threadpool(_switches)

    @router.post("/switches", status_code=201, response_model=SwitchOut)
    async def add_switch(body: SwitchIn) -> SwitchOut:
        """Register a PoE switch; `master_port` is its uplink to the pimaster (never switched)."""
        return await run_in_threadpool(_save_switch, body, True)

    @router.get("/switches/{name}", response_model=SwitchOut)
    async def get_switch(name: NameParam) -> SwitchOut:
        info = await run_in_threadpool(_switches)
        for sw in info:
            if sw.name == name:
                return sw
        raise HTTPException(404, f"switch {name} not found")

    @router.put("/switches/{name}", response_model=SwitchOut)
    async def update_switch(name: NameParam, body: SwitchIn) -> SwitchOut:
        return await run_in_threadpool(_save_switch, body, False, name)

    @router.delete("/switches/{name}")
    async def delete_switch(name: NameParam) -> dict[str, str]:
        return await run_in_threadpool(_delete_switch, name)

    @router.get("/switches/{name}/ports", response_model=list[PortOut])
    async def switch_ports(name: NameParam) -> list[PortOut]:
        """PoE state of every port (one SNMP walk), with the node on it and its power draw."""
        sw = await run_in_threadpool(_switch, name)
        nodes = await run_in_threadpool(_nodes_on, name)
        try:
            states = await driver.snmp.ports_status(sw)
        except SnmpError as exc:
            raise HTTPException(502, str(exc)) from None
        out = []
        for port in range(1, sw.port_count + 1):
            power = None
            if sw.power_oid:
                try:
                    power = await driver.snmp.port_power(sw, port)
                except SnmpError:
                    power = None
            out.append(PortOut(port=port, status=states.get(port, "unknown"), master=port == sw.master_port,
                               node=nodes.get(port), power_w=power))
        return out

    def _record(message: str) -> None:
        with write_session(sessions) as s:
            add_event(s, None, message)

    async def _power(name: str, port: int, on: bool, user: str) -> PortOut:
        sw = await run_in_threadpool(_switch, name)
        if not 1 <= port <= sw.port_count:
            raise HTTPException(422, f"port: switch {name} has ports 1..{sw.port_count}")
        try:
            await driver.snmp.set_power(sw, port, on)
            state = await driver.snmp.port_status(sw, port)
        except MasterPortRefused as exc:
            raise HTTPException(409, str(exc)) from None
        except SnmpError as exc:
            raise HTTPException(502, str(exc)) from None
        node = (await run_in_threadpool(_nodes_on, name)).get(port)
        what = f"switch {name} port {port}" + (f" ({node})" if node else "")
        await run_in_threadpool(_record, f"{what} powered {'on' if on else 'off'} by {user}")
        return PortOut(port=port, status=state, master=False, node=node)

    @router.post("/switches/{name}/ports/{port}/on", response_model=PortOut)
    async def port_on(name: NameParam, port: int, caller: AdminDep) -> PortOut:
        return await _power(name, port, True, caller.user)

    @router.post("/switches/{name}/ports/{port}/off", response_model=PortOut)
    async def port_off(name: NameParam, port: int, caller: AdminDep) -> PortOut:
        """Refused (409) on the switch's master port."""
        return await _power(name, port, False, caller.user)

    # ------------------------------------------------------------ environments

    def _image(image: str) -> Path:
        try:
            path = image_path(env_dir, image)
        except ValueError as exc:
            raise HTTPException(422, f"image: {exc}") from None
        if not path.is_file():
            raise HTTPException(422, f"image: no file {image!r} in env_path")
        return path

    def _envs() -> list[EnvironmentOut]:
        with sessions() as s:
            return [env_out(r) for r in s.scalars(select(Environment).order_by(Environment.name))]

    def _save_env(body: EnvironmentIn, create: bool, name: str | None = None) -> EnvironmentOut:
        path = _image(body.image)
        rel = str(path.relative_to(env_dir.resolve()))
        checksum = body.checksum.lower() or sha256_file(path)
        with write_session(sessions) as s:
            row = _row_to_save(s, Environment, "environment", body.name, create, name)
            row.image, row.size, row.sector_start = rel, body.size, body.sector_start
            row.ssh_user = body.ssh_user
            row.web, row.checksum, row.description = body.web, checksum, body.description
            row.state, row.owner = body.state, body.owner
            s.flush()
            return env_out(row)

    def _env_in_use(s: Any, name: str) -> list[str]:
        rows = s.scalars(select(Reservation).where(Reservation.status.in_(ACTIVE_STATUSES)))
        return [r.node_name for r in rows if (r.params or {}).get("environment") == name]

    def _delete_env(name: str) -> dict[str, str]:
        with write_session(sessions) as s:
            row = s.get(Environment, name)
            if row is None:
                raise HTTPException(404, f"environment {name} not found")
            used = _env_in_use(s, name)
            if used:
                raise HTTPException(409, f"environment {name} is in use on {', '.join(sorted(set(used)))}")
            s.delete(row)
        # The image file stays: an environment row describes a file, it does not own it.
        return {"name": name, "result": "deleted"}

    def _scan() -> ScanOut:
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
                with sessions() as s:
                    exists = s.get(Environment, body.name) is not None
                _save_env(body, not exists, body.name)
            except HTTPException as exc:
                out.skipped[sidecar.name] = str(exc.detail)
                continue
            except (ValueError, OSError) as exc:
                out.skipped[sidecar.name] = str(exc).splitlines()[0][:300]
                continue
            (out.updated if exists else out.added).append(body.name)
        return out

    @router.get("/environments", response_model=list[EnvironmentOut])
    async def list_environments() -> list[EnvironmentOut]:
        return await run_in_threadpool(_envs)

    @router.post("/environments", status_code=201, response_model=EnvironmentOut)
    async def add_environment(body: EnvironmentIn) -> EnvironmentOut:
        """Register an image file of env_path (its sha256 is computed when not given)."""
        return await run_in_threadpool(_save_env, body, True)

    @router.get("/environments/{name}", response_model=EnvironmentOut)
    async def get_environment(name: NameParam) -> EnvironmentOut:
        for env in await run_in_threadpool(_envs):
            if env.name == name:
                return env
        raise HTTPException(404, f"environment {name} not found")

    @router.put("/environments/{name}", response_model=EnvironmentOut)
    async def update_environment(name: NameParam, body: EnvironmentIn) -> EnvironmentOut:
        return await run_in_threadpool(_save_env, body, False, name)

    @router.delete("/environments/{name}")
    async def delete_environment(name: NameParam) -> dict[str, str]:
        return await run_in_threadpool(_delete_env, name)

    @router.post("/environments/scan", response_model=ScanOut)
    async def scan_environments() -> ScanOut:
        """Register every image of env_path described by a sidecar JSON file (`<image>.json`, as
        written by the image builder: name, image, size, sector_start, ssh_user, checksum)."""
        return await run_in_threadpool(_scan)

    return router
