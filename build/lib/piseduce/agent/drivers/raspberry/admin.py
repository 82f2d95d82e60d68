"""Admin routes of a raspberry agent (mounted by the API under `/api/admin`): PoE switches and
their ports (admin_switches.py), the environments, OS images in env_path
(admin_environments.py), the boards' network configuration (admin_network.py) and node
detection (admin_detect.py). Nodes
themselves are the API's `/api/admin/nodes`. Module-level routers: each route gets the agent's
raspberry driver as a dependency (admin_schemas.Rpi)."""

from __future__ import annotations

from fastapi import APIRouter

from piseduce.agent.drivers.raspberry import (
    admin_detect,
    admin_environments,
    admin_network,
    admin_switches,
)

router = APIRouter()
router.include_router(admin_switches.router)
router.include_router(admin_environments.router)
router.include_router(admin_network.router)
router.include_router(admin_detect.router)
