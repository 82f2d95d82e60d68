"""The iot-lab driver's view of the site: its Alive and Busy nodes and the experiments outside
PiSeduce that hold them."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piseduce.agent.drivers.base import BusyInterval, CredentialsRequired, NodeSpec
from piseduce.agent.drivers.iotlab.client import Client, TransientError
from piseduce.agent.drivers.iotlab.experiments import (
    ADDRESS,
    LIVE,
    as_float,
    our_prefix,
    parse_date,
    short_name,
    utcnow,
)

if TYPE_CHECKING:
    from piseduce.config import AgentConfig

RUNNING_CACHE_SECONDS = 10.0
INVENTORY_BURST_SECONDS = 5.0


class IotlabInventory:
    def __init__(self, config: AgentConfig, client: Client) -> None:
        self.config = config
        self.site = config.iot_site
        self.client = client
        self._inventory: list[NodeSpec] | None = None
        self._inventory_at = -math.inf
        self._running_cache: list[dict[str, Any]] | None = None
        self._running_cache_at = -math.inf

    async def nodes(self, credentials: Mapping[str, str] | None = None) -> list[NodeSpec]:
        """The site's Alive and Busy nodes. The agent's inventory already refreshes only every
        `inventory_refresh_seconds`, so the list is kept here only briefly (to absorb bursts) and
        as a fallback: without credentials an anonymous request is tried, and when the API refuses
        or fails the last list is served."""
        fresh_for = min(INVENTORY_BURST_SECONDS, self.config.inventory_refresh_seconds)
        if self._inventory is not None and time.monotonic() - self._inventory_at < fresh_for:
            return list(self._inventory)
        site = self.site
        try:
            answer = await self.client.call(
                credentials, lambda api: api.get_nodes(site=site), anonymous=not credentials
            )
        except (CredentialsRequired, TransientError):
            if self._inventory is not None:
                return list(self._inventory)
            raise
        specs = [self._node_spec(item) for item in (answer or {}).get("items", [])]
        self._inventory = [s for s in specs if s is not None]
        self._inventory_at = time.monotonic()
        return list(self._inventory)

    def _node_spec(self, item: Any) -> NodeSpec | None:
        if not isinstance(item, dict) or item.get("state") not in ("Alive", "Busy"):
            return None
        address = str(item.get("network_address") or "")
        if not ADDRESS.fullmatch(address) or item.get("site", self.site) != self.site:
            return None
        archi = str(item.get("archi") or "")
        model, _, radio = archi.partition(":")
        properties: dict[str, Any] = {"archi": archi, "model": model, "radio": radio, "site": self.site}
        properties["mobile"] = bool(int(item.get("mobile") or 0))
        for axis in ("x", "y", "z"):
            value = as_float(item.get(axis))
            if value is not None:
                properties[axis] = value
        return NodeSpec(
            name=short_name(address),
            status="available",
            properties=properties,
            attrs={
                "network_address": address,
                "uid": str(item.get("uid") or ""),
                "iotlab_state": item["state"],
            },
        )

    async def running_experiments(self, credentials: Mapping[str, str]) -> list[dict[str, Any]]:
        if (
            self._running_cache is not None
            and time.monotonic() - self._running_cache_at < RUNNING_CACHE_SECONDS
        ):
            return self._running_cache
        try:
            answer = await self.client.call(credentials, lambda api: api.get_running_experiments())
        except TransientError:
            return self._running_cache or []
        self._running_cache = [i for i in (answer or {}).get("items", []) if isinstance(i, dict)]
        self._running_cache_at = time.monotonic()
        return self._running_cache

    async def busy(
        self, start: dt.datetime, end: dt.datetime, credentials: Mapping[str, str] | None = None
    ) -> list[BusyInterval]:
        """Nodes held by experiments not submitted by this agent (other users' experiments, or the
        user's own outside PiSeduce), clipped to [start, end). Invisible without credentials."""
        if not credentials:
            return []
        now = utcnow()
        ours = our_prefix(self.site)
        suffix = f".{self.site}.iot-lab.info"
        busy: list[BusyInterval] = []
        for item in await self.running_experiments(credentials):
            if str(item.get("name") or "").startswith(ours) or item.get("state") not in LIVE:
                continue
            started = parse_date(item.get("start_date"))
            if started is not None and item.get("state") == "Running":
                begin = started
            else:
                # Not started yet: it runs from its scheduled date, or as soon as possible (now).
                begin = max(parse_date(item.get("scheduled_date")) or now, now)
            finish = begin + dt.timedelta(minutes=as_float(item.get("submitted_duration")) or 0.0)
            if finish <= start or begin >= end:
                continue
            reason = f"IoT-LAB experiment {item.get('id')} (outside PiSeduce)"
            for address in item.get("nodes") or []:
                if isinstance(address, str) and address.endswith(suffix):
                    busy.append(
                        BusyInterval(short_name(address), max(begin, start), min(finish, end), reason)
                    )
        return busy
