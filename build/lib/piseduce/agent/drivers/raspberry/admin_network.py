"""Admin route of a raspberry agent (under `/api/admin`): the boards' network configuration
(netconfig.py), the files' text, for the web UI's Switches page and for `curl` on the pimaster
(`jq -r .dnsmasq`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from starlette.concurrency import run_in_threadpool

from piseduce.agent.auth import admin
from piseduce.agent.drivers.raspberry.admin_schemas import ERRORS, Rpi
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.netconfig import NetworkConfigError, network_files
from piseduce.protocol_rpi import NetworkConfigOut

router = APIRouter(tags=["admin: raspberry"], dependencies=[Depends(admin)], responses=ERRORS)


def _files(driver: RaspberryDriver) -> NetworkConfigOut:
    with driver.sessions() as s:
        try:
            files = network_files(driver.config, s)
        except NetworkConfigError as exc:
            raise HTTPException(409, f"the agent's config: {exc}") from None
    return NetworkConfigOut(dnsmasq=files.dnsmasq, exports=files.exports, skipped=files.skipped)


@router.get("/network-config", response_model=NetworkConfigOut)
async def network_config(driver: Rpi) -> NetworkConfigOut:
    """The dnsmasq configuration of the boards' network (the NFS export line in its last comment)
    and that export line: what `piseduce agent network-config` writes."""
    return await run_in_threadpool(_files, driver)
