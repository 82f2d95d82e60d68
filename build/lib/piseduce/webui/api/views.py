"""What the agents answered (the protocol's models), in the users' API's models (piseduce.api_models)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Response
from pydantic import BaseModel

from piseduce import sshjump
from piseduce.api_models import (
    AgentOut,
    ConnectionOut,
    EnergyOut,
    EventOut,
    GatewayOut,
    ReservationDetailOut,
    ReservationOut,
)
from piseduce.protocol import DEPLOYED, Feature
from piseduce.protocol import ReservationOut as AgentReservation
from piseduce.webui.agents import AgentHub, AgentRef
from piseduce.webui.jumps import jump_of
from piseduce.webui.models import AGENT_CONNECTED, AGENT_UNREACHABLE

STATES = {AGENT_CONNECTED: "up", AGENT_UNREACHABLE: "down"}
# The API's action names -> the agent client's (`release` is destroy: wipe and give back).
ACTIONS = {
    "reboot": "reboot",
    "redeploy": "redeploy",
    "destroy": "destroy",
    "release": "destroy",
    "bootfiles": "bootfiles",
}
# The agent's action names -> the API's (what `actions` lists).
OFFERED = {
    "deploy": "deploy",
    "destroy": "destroy",
    "extend": "extend",
    "reboot": "reboot",
    "redeploy": "redeploy",
    "bootfiles": "bootfiles",
    "register_env": "save-environment",
}


def agent_out(h: AgentHub, ref: AgentRef) -> AgentOut:
    state = "down" if h.is_down(ref.id) else STATES.get(ref.status, ref.status or "unknown")
    about = ref.about
    return AgentOut(
        name=ref.name,
        type=ref.node_type,
        site=ref.site,
        state=state,
        error=ref.last_error,
        features=sorted(str(f) for f in about.features),
        labels=dict(about.labels),
    )


def gateway_out(ref: AgentRef, r: AgentReservation) -> GatewayOut | None:
    j, gw = jump_of(ref, r), ref.about.gateway
    if j is None or gw is None:
        return None
    return GatewayOut(
        host=gw.host, port=gw.port, user=gw.user, host_key=gw.host_key, command=j.command,
        ssh_config=j.ssh_config, known_hosts=j.known_hosts, known_hosts_file=sshjump.DEFAULT_KNOWN_HOSTS,
    )


def connection_out(conn: dict[str, Any], gateway: GatewayOut | None = None) -> ConnectionOut | None:
    """The agent's connection info for a client: host, port, user and pinned host key; the rest in
    `details`. None while the node cannot be reached by SSH."""
    if not conn.get("host"):
        return None
    known = {"host", "port", "user", "host_key", "host_key_fingerprint", "via", "ssh", "password_set"}
    port = conn.get("port")
    return ConnectionOut(
        host=str(conn["host"]),
        port=port if isinstance(port, int) and 0 < port < 65536 else 22,
        user=str(conn.get("user") or conn.get("login") or "root"),
        host_key=str(conn["host_key"]) if conn.get("host_key") else None,
        host_key_fingerprint=str(conn["host_key_fingerprint"]) if conn.get("host_key_fingerprint") else None,
        jump=str(conn["via"]) if conn.get("via") else None,
        command=str(conn.get("ssh") or ""),
        details={k: v for k, v in conn.items() if k not in known},
        gateway=gateway,
    )


def reservation_out(ref: AgentRef, r: AgentReservation) -> ReservationOut:
    actions = [OFFERED[a] for a in r.actions if a in OFFERED]
    if ref.supports(Feature.SAVE_ENV) and r.status == DEPLOYED and not r.process:
        actions.append("save-environment")
    return ReservationOut(
        key=f"{ref.name}/{r.id}",
        agent=ref.name,
        id=r.id,
        node=r.node,
        type=ref.node_type,
        owner=r.owner,
        bin=r.bin,
        status=r.status,
        step=r.step,
        step_label=r.step_label,
        # 0..1 of the running process (the agent's percentage of the whole process); null when none runs.
        progress=max(0.0, min(1.0, r.progress / 100)) if r.process else None,
        error=r.error,
        start=r.start,
        end=r.end,
        connection=connection_out(dict(r.connection), gateway_out(ref, r)),
        actions=list(dict.fromkeys(actions)),
        energy=EnergyOut(**r.energy.model_dump()) if r.energy is not None else None,
    )


def events_out(r: AgentReservation) -> list[EventOut]:
    return [
        EventOut(
            n=n, time=e.time.isoformat().replace("+00:00", "Z"), level=e.level, step=e.step, message=e.message
        )
        for n, e in enumerate(r.events, start=1)
    ]


def detail_out(ref: AgentRef, r: AgentReservation) -> ReservationDetailOut:
    return ReservationDetailOut(**reservation_out(ref, r).model_dump(), events=events_out(r))


def listed(items: Sequence[BaseModel], response: Response) -> Response:
    """A long list (a thousand nodes) answered as it was built, from checked models: FastAPI
    would validate each item against the response model once more, for nothing."""
    body = b"[" + b",".join(m.model_dump_json().encode() for m in items) + b"]"
    # What the route set on FastAPI's temporary response (X-Piseduce-Unavailable), not its length.
    kept = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return Response(body, media_type="application/json", headers=kept)
