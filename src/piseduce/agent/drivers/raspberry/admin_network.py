"""Admin route of a raspberry agent (under `/api/admin`): the boards' network configuration
(netconfig.py) as text, for the web UI's Switches page and for `curl` on the pimaster."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from piseduce.agent.auth import admin
from piseduce.agent.drivers.raspberry.admin_schemas import ERRORS, Rpi
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.netconfig import NetworkConfigError, NetworkFiles, network_files

router = APIRouter(tags=["admin: raspberry"], dependencies=[Depends(admin)], responses=ERRORS)


def _files(driver: RaspberryDriver) -> NetworkFiles:
    with driver.sessions() as s:
        try:
            return network_files(driver.config, s)
        except NetworkConfigError as exc:
            raise HTTPException(409, f"the agent's config: {exc}") from None


@router.get("/network-config", response_class=PlainTextResponse)
async def network_config(driver: Rpi) -> PlainTextResponse:
    """The dnsmasq configuration of the boards' network, the NFS export line in its last comment
    (what `piseduce agent network-config` writes)."""
    files = await run_in_threadpool(_files, driver)
    return PlainTextResponse(files.dnsmasq)
