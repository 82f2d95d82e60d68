"""Health (no auth) and the agent's identity."""

from __future__ import annotations

from fastapi import APIRouter

import piseduce
from piseduce.agent.api.deps import StateDep
from piseduce.agent.auth import CallerDep
from piseduce.agent.schemas import Health, Info

router = APIRouter(prefix="/api", tags=["info"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()


@router.get("/info", response_model=Info)
async def info(state: StateDep, _caller: CallerDep) -> Info:
    cfg = state.config
    return Info(
        name=cfg.agent_name,
        node_type=cfg.node_type,
        site=cfg.site,
        version=getattr(piseduce, "__version__", "0"),
        needs_credentials=state.driver.needs_credentials,
    )
