"""Admin routes of a raspberry agent (under `/api/admin`): node detection (detect.py). POST starts
a job for one switch and a list of ports and answers at once (202) with its id; GET follows its
ports' progress. Bad input (unknown switch, ports out of range or the uplink, a pattern making an
invalid name or another node's name) is a 4xx before any port is powered.

Jobs live in the agent process (`driver.detections`): a page reload finds them again, an agent
restart forgets them (the nodes they registered stay)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from ipaddress import IPv4Address
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParam
from pydantic import Field, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from piseduce.agent.api.admin import _add, _patch
from piseduce.agent.api.deps import AgentState, StateDep
from piseduce.agent.auth import AdminDep, Caller, admin
from piseduce.agent.drivers.raspberry.admin_schemas import ERRORS, NAME_RE, Name, Rpi
from piseduce.agent.drivers.raspberry.detect import (
    DetectError,
    Detection,
    Detector,
    Found,
    PortDetection,
    free_address,
    name_for,
)
from piseduce.agent.drivers.raspberry.detect_guard import held_reason, held_until
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.netconfig import (
    BoardNetwork,
    NetworkConfigError,
    board_network,
    network_files,
)
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.agent.drivers.raspberry.switch_secrets import SecretsUnavailable
from piseduce.agent.models import Node, Switch
from piseduce.agent.schemas import NodeIn, NodePatchIn, Strict
from piseduce.cli_files import FileOptionError, replace_text
from piseduce.config import first_error
from piseduce.dbtypes import utcnow
from piseduce.protocol_rpi import DetectionOut

log = logging.getLogger(__name__)
router = APIRouter(tags=["admin: raspberry"], dependencies=[Depends(admin)], responses=ERRORS)
MAX_JOBS = 20
JobId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{12}$")]  # the finished jobs kept for the page


# A port is a JSON integer, as the schema says: "8" (or 8.0, true) is refused, not read (issue 16).
Port = Annotated[int, Field(strict=True)]


class DetectIn(Strict):
    switch: Name
    ports: list[Port] = Field(min_length=1, max_length=256)
    pattern: str = Field(default="pi-{port}", min_length=1, max_length=120)


def _plan(state: AgentState, driver: RaspberryDriver, body: DetectIn,
          ) -> tuple[list[PortDetection], BoardNetwork, SwitchInfo, dict[int, str]]:
    """Checks everything before a port is powered: 4xx, nothing changed. A port whose node a
    reservation holds now is planned `failed` with its reason (never powered); the others' known
    serials (port -> serial) are the TFTP folders to point at the netboot template."""
    if len(set(body.ports)) != len(body.ports):
        raise HTTPException(422, "ports: a port is listed twice")
    with state.sessions() as s:
        sw = s.get(Switch, body.switch)
        if sw is None:
            raise HTTPException(404, f"switch: unknown switch {body.switch!r}; add the switch first")
        bad = [p for p in body.ports if not 1 <= p <= sw.port_count]
        if bad:
            raise HTTPException(422, f"ports: switch {sw.name} has ports 1 to {sw.port_count}; "
                                     f"{', '.join(map(str, bad))} not")
        if sw.master_port and sw.master_port in body.ports:
            raise HTTPException(422, f"ports: port {sw.master_port} is the uplink of {sw.name}: it "
                                     "powers no board")
        nodes = list(s.scalars(select(Node).where(Node.present.is_(True))))
        try:
            net = board_network(state.config, [n.ip for n in nodes if n.ip])
        except NetworkConfigError as exc:
            raise HTTPException(409, f"the board network: {exc}") from None
        try:
            info = driver.keyring.info(sw)
        except SecretsUnavailable as exc:
            raise HTTPException(409, str(exc)) from None
        ports = []
        for port in body.ports:
            try:
                name = name_for(body.pattern, port)
            except DetectError as exc:
                raise HTTPException(422, f"pattern: {exc}") from None
            if not re.match(NAME_RE, name):
                raise HTTPException(422, f"pattern: {name!r} is not a valid node name")
            owner = next((n for n in nodes if n.name == name), None)
            if owner is not None and ((owner.attrs or {}).get("switch") != sw.name
                                      or str((owner.attrs or {}).get("port")) != str(port)):
                raise HTTPException(409, f"pattern: {name} is the name of another node (on "
                                         f"{(owner.attrs or {}).get('switch')} port "
                                         f"{(owner.attrs or {}).get('port')}); choose another pattern")
            ports.append(PortDetection(port, name))
        on_port = {p.port: [n for n in nodes if (n.attrs or {}).get("switch") == sw.name
                            and str((n.attrs or {}).get("port")) == str(p.port)] for p in ports}
        held = held_until(s, [n.name for found in on_port.values() for n in found], utcnow())
        netboot: dict[int, str] = {}
        for p in ports:
            until = max((held[n.name] for n in on_port[p.port] if n.name in held), default=None)
            if until is not None:
                p.step, p.reason = "failed", held_reason(until)
                continue
            serial = next((str((n.attrs or {}).get("serial")) for n in on_port[p.port]
                           if (n.attrs or {}).get("serial")), "")
            if serial:
                netboot[p.port] = serial
    return ports, net, info, netboot


# Registrations of concurrent ports, one at a time: each picks a free static address knowing the
# ones picked before it, and rewrites the dnsmasq file with every lease.
_REGISTERING = threading.Lock()


def register(state: AgentState, switch: str, net: BoardNetwork, p: PortDetection, found: Found) -> bool:
    """Registers the board through the admin "add node" code (its checks), or updates the row of
    the board with this serial (re-detection): True when a row was updated. A board found by its
    DHCP lease gets a static address (a known board keeps its own), and the dnsmasq file is
    rewritten so that its next power-on gets it."""
    with _REGISTERING:
        updated = _register(state, switch, net, p, found)
        if found.dhcp:
            _rewrite_dnsmasq(state, p)
    return updated


def _rewrite_dnsmasq(state: AgentState, p: PortDetection) -> None:
    if not state.config.dnsmasq_config_file:
        return
    path = state.config.resolve(state.config.dnsmasq_config_file)
    try:
        with state.sessions() as s:
            files = network_files(state.config, s)
        replace_text(path, files.dnsmasq, "dnsmasq_config_file")
    except (NetworkConfigError, FileOptionError) as exc:
        raise DetectError(f"registered, but the dnsmasq file was not rewritten: {exc}") from None


def _register(state: AgentState, switch: str, net: BoardNetwork, p: PortDetection, found: Found) -> bool:
    caller = Caller(user="detection", admin=True)
    with state.sessions() as s:
        present = list(s.scalars(select(Node).where(Node.present.is_(True))))
        known = next((n for n in present if (n.attrs or {}).get("serial") == found.serial), None)
        ip = found.ip
        if found.dhcp:
            static = IPv4Address(known.ip) if known is not None and known.ip else free_address(
                net, p.port, {str(n.ip) for n in present if n.ip})
            if static is None:
                raise DetectError(f"no free static address left on the board network {net.network}")
            ip = str(static)
        taken = next((n.name for n in present if n.ip == ip and (known is None or n.name != known.name)),
                     None)
    if taken is not None:
        raise DetectError(f"address {ip} is {taken}'s already")
    p.ip = ip
    desc: dict[str, Any] = {"ip": ip, "switch": switch, "port": p.port, "ssh_port": found.ssh_port,
                            "model": found.model, "serial": found.serial, "mac": found.mac,
                            "host_key": found.host_key}
    if found.memory_gb is not None:
        # learnt properties are set; the others (an admin's, the model's own key) are kept
        kept = {k: v for k, v in ((known.properties or {}) if known is not None else {}).items()
                if k != "model"}
        desc["properties"] = {**kept, "memory_gb": found.memory_gb}
    try:
        if known is not None:
            p.name = known.name
            _patch(state, caller, known.name, NodePatchIn(**desc))
            return True
        _add(state, caller, NodeIn(name=p.name, **desc))
        return False
    except HTTPException as exc:
        raise DetectError(f"not registered: {exc.detail}") from None
    except ValidationError as exc:
        # what the board's `piseduce-node info` said is the board's input: refused like an admin's
        key, msg = first_error(exc)
        raise DetectError(f"not registered: the board reported a {key} the agent refuses: "
                          f"{' '.join(msg.split())[:300]}") from None


@router.post("/detect", status_code=202, response_model=DetectionOut)
async def start_detection(body: DetectIn, state: StateDep, driver: Rpi, caller: AdminDep) -> dict[str, Any]:
    """Detect the boards on these ports of the switch, concurrently: the answer is the job (its id,
    every port `waiting`); follow it with GET /api/admin/detect/{id}."""
    ports, net, info, netboot = await run_in_threadpool(_plan, state, driver, body)
    jobs = driver.detections
    busy = {p.port for j in jobs.values() if not j.done and j.switch == body.switch for p in j.ports}
    if busy & set(body.ports):
        raise HTTPException(409, f"ports {', '.join(map(str, sorted(busy & set(body.ports))))} are being "
                                 "detected already")
    job = Detection(uuid.uuid4().hex[:12], body.switch, ports)
    log.info("detection %s started by %s: switch %s, ports %s, pattern %r", job.id, caller.user,
             body.switch, ",".join(map(str, body.ports)), body.pattern)
    for p in ports:
        if p.step == "failed":
            log.info("detection %s: %s port %d: failed: %s", job.id, body.switch, p.port, p.reason)
    for old in [k for k, j in jobs.items() if j.done][: max(0, len(jobs) - MAX_JOBS + 1)]:
        del jobs[old]
    jobs[job.id] = job
    cfg = state.config
    detector = Detector(driver.ops, cfg.resolve(cfg.dhcp_leases_file) if cfg.dhcp_leases_file else None,
                        netboot=netboot)
    task = asyncio.create_task(
        detector.run(job, info, net, lambda p, f: register(state, body.switch, net, p, f)),
        name=f"detect-{job.id}",
    )
    driver.detection_tasks.add(task)
    task.add_done_callback(driver.detection_tasks.discard)
    return job.view()


@router.get("/detect", response_model=list[DetectionOut])
async def list_detections(driver: Rpi) -> list[dict[str, Any]]:
    """The detection jobs this agent process ran, newest first."""
    return [j.view() for j in sorted(driver.detections.values(), key=lambda j: j.started, reverse=True)]


@router.get("/detect/{job_id}", response_model=DetectionOut)
async def get_detection(job_id: JobId, driver: Rpi) -> dict[str, Any]:
    job = driver.detections.get(job_id)
    if job is None:
        raise HTTPException(404, f"no detection {job_id}")
    return job.view()
