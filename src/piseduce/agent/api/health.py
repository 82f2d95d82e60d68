"""Health (no auth) and the agent's identity."""

from __future__ import annotations

from fastapi import APIRouter

import piseduce
from piseduce.agent.api.deps import AgentState, StateDep
from piseduce.agent.auth import CallerDep
from piseduce.protocol import AgentInfo, Health

router = APIRouter(prefix="/api", tags=["info"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()


@router.get("/info", response_model=AgentInfo)
async def info(state: StateDep, _caller: CallerDep) -> AgentInfo:
    """Who the agent is and what it supports: the web UI offers what `features` lists."""
    return agent_info(state)


def agent_info(state: AgentState) -> AgentInfo:
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
    )
