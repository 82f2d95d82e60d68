"""The g5k driver's view of the site: its nodes (the reference API's, minus dead ones) and the
jobs outside PiSeduce that hold them (the status API), both cached briefly."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piseduce.agent.clock import SYSTEM, Clock
from piseduce.agent.drivers.base import BusyInterval, CredentialsRequired, NodeSpec
from piseduce.agent.drivers.g5k.access import G5kAccess, hook_error
from piseduce.agent.drivers.g5k.client import G5kError

if TYPE_CHECKING:
    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

ENDED_JOB_STATES = ("terminated", "error")
# What may go into an OAR SQL filter: never anything but a host name.
FQDN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$")


def ts(value: Any) -> dt.datetime | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC) if seconds > 0 else None


def hhmm(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class G5kInventory:
    def __init__(self, config: AgentConfig, access: G5kAccess, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.access = access
        # How old the caches are (a test moves it on instead of waiting for them to expire).
        self.clock = clock
        self.status_ttl = config.g5k_status_cache_seconds
        self._inventory: list[NodeSpec] | None = None
        self._inventory_at = 0.0
        self.status: dict[str, Any] | None = None
        self.status_at = 0.0

    def forget_status(self) -> None:
        """The calendar changed (a job submitted or deleted): read the status again next time."""
        self.status = None

    async def nodes(self, credentials: Mapping[str, str] | None = None) -> list[NodeSpec]:
        """The site's nodes from the reference API (queues with `default`), minus dead ones;
        cached for `inventory_refresh_seconds` (the agent's Inventory serialises the refreshes)."""
        if (
            self._inventory is not None
            and self.clock.monotonic() - self._inventory_at < self.config.inventory_refresh_seconds
        ):
            return list(self._inventory)
        creds = self.access.service_creds(credentials)
        if creds is None:
            raise CredentialsRequired("no Grid'5000 login was forwarded to read the node list")
        try:
            async with self.access.client(creds) as api:
                clusters = await api.clusters()
                per_cluster = await asyncio.gather(*(api.nodes(str(c["uid"])) for c in clusters))
                status = await api.status()
        except G5kError as exc:
            raise hook_error(exc, "reading the Grid'5000 node list") from exc
        specs = self._specs(clusters, per_cluster, status)
        self._inventory, self._inventory_at = specs, self.clock.monotonic()
        self.status, self.status_at = status, self.clock.monotonic()
        log.info("Grid'5000 %s: %d nodes in the inventory", self.access.site, len(specs))
        return list(specs)

    def _specs(
        self, clusters: list[dict[str, Any]], per_cluster: list[list[dict[str, Any]]], status: dict[str, Any]
    ) -> list[NodeSpec]:
        states = status.get("nodes") or {}
        specs: list[NodeSpec] = []
        for cluster, nodes in zip(clusters, per_cluster, strict=True):
            for ref in nodes:
                queues = (ref.get("supported_job_types") or {}).get("queues") or []
                if "default" not in queues:
                    continue
                adapters = ref.get("network_adapters") or []
                fqdn = (
                    next(
                        (
                            a.get("network_address")
                            for a in adapters
                            if a.get("mounted") and a.get("network_address")
                        ),
                        None,
                    )
                    or f"{ref['uid']}.{self.access.site}.grid5000.fr"
                )
                if not FQDN.match(str(fqdn)):
                    continue
                hard = (states.get(fqdn) or {}).get("hard")
                if hard is None or hard == "dead":
                    continue
                arch = ref.get("architecture") or {}
                ram = int((ref.get("main_memory") or {}).get("ram_size") or 0)
                specs.append(
                    NodeSpec(
                        name=str(ref["uid"]),
                        ip=str(fqdn),
                        status="available" if hard in ("alive", "standby") else "maintenance",
                        properties={
                            "cluster": str(cluster["uid"]),
                            "cores": int(arch.get("nb_threads") or 0),
                            "memory_gb": round(ram / 1024**3),
                            "model": str(
                                (ref.get("chassis") or {}).get("name") or cluster.get("model") or ""
                            ),
                            "site": self.access.site,
                        },
                        attrs={"fqdn": str(fqdn), "arch": str(arch.get("platform_type") or "x86_64")},
                    )
                )
        return specs

    async def busy(
        self, start: dt.datetime, end: dt.datetime, credentials: Mapping[str, str] | None = None
    ) -> list[BusyInterval]:
        """Other jobs (of anyone, made outside this agent) holding nodes between start and end."""
        creds = self.access.service_creds(credentials)
        if creds is None:
            # Nothing can be read without a login; the booking itself will ask for one.
            return []
        status = await self.site_status(creds)
        now = dt.datetime.now(dt.UTC)
        out: list[BusyInterval] = []
        for fqdn, entry in (status.get("nodes") or {}).items():
            name = str(fqdn).split(".")[0]
            reservations = entry.get("reservations")
            if reservations is None:
                # No job details (anonymous view): a busy node is held at least for now.
                if str(entry.get("soft", "")).startswith("busy"):
                    out.append(BusyInterval(name, now, now + dt.timedelta(hours=1)))
                continue
            for job in reservations:
                if str(job.get("name") or "").startswith(self.access.job_prefix):
                    continue  # ours: already in PiSeduce's own calendar
                if str(job.get("state") or "").lower() in ENDED_JOB_STATES:
                    continue
                begin = ts(job.get("started_at")) or ts(job.get("scheduled_at")) or now
                finish = begin + dt.timedelta(seconds=int(job.get("walltime") or 3600))
                if begin < end and start < finish:
                    out.append(
                        BusyInterval(
                            name, begin, finish, f"Grid'5000 job {job.get('uid')} (outside PiSeduce)"
                        )
                    )
        return out

    async def site_status(self, creds: tuple[str, str]) -> dict[str, Any]:
        if self.status is not None and self.clock.monotonic() - self.status_at < self.status_ttl:
            return self.status
        try:
            async with self.access.client(creds) as api:
                status = await api.status()
        except G5kError as exc:
            raise hook_error(exc, "reading the Grid'5000 site status") from exc
        self.status, self.status_at = status, self.clock.monotonic()
        return status
