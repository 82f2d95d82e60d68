"""Health (no auth) and the agent's identity."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

import piseduce
from piseduce.agent.api.deps import AgentState, StateDep
from piseduce.agent.auth import CallerDep
from piseduce.config import AgentConfig
from piseduce.protocol import AgentInfo, GatewayInfo, Health

router = APIRouter(prefix="/api", tags=["info"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()


@router.get("/info", response_model=AgentInfo)
async def info(state: StateDep, _caller: CallerDep) -> AgentInfo:
    """Who the agent is and what it supports: the web UI offers what `features` lists; `gateway`:
    how users reach the boards from outside the lab, when the agent runs its SSH gateway."""
    gateway = await asyncio.to_thread(gateway_of, state.config)
    return agent_info(state, gateway)


_GATEWAYS: dict[tuple[str, int, str, str], GatewayInfo | None] = {}


def gateway_of(cfg: AgentConfig) -> GatewayInfo | None:
    """Read (or made) once: the key file is the gateway's for as long as this process runs."""
    from piseduce.agent.gateway import public_info

    path = str(cfg.resolve(cfg.gateway_host_key_file))
    key = (cfg.gateway_public_host, cfg.gateway_advertised_port, cfg.gateway_user, path)
    if key not in _GATEWAYS:
        _GATEWAYS[key] = public_info(cfg)
    return _GATEWAYS[key]


def agent_info(state: AgentState, gateway: GatewayInfo | None = None) -> AgentInfo:
    cfg, driver = state.config, state.driver
    return AgentInfo(
        name=cfg.agent_name,
        node_type=cfg.node_type,
        site=cfg.site,
        version=getattr(piseduce, "__version__", "0"),
        features=state.features(),
        credentials=driver.credential_kind,
        labels=dict(driver.labels),
        needs_credentials=driver.needs_credentials,
        gateway=gateway,
    )
