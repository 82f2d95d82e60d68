"""Monitoring samples: JSON series for charts (`GET /api/monitoring`) and Prometheus gauges.

Every user sees every node's power and temperature (it says nothing about who does what). A query
covers at most `MAX_WINDOW` and is averaged by the database into at most `MAX_POINTS` buckets per
series, so its cost does not grow with the sampling period, the retention or the window.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Integer, cast, extract, func, literal, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent.api.deps import AgentState, StateDep, db
from piseduce.agent.auth import CallerDep
from piseduce.agent.models import Node, Sample
from piseduce.dbtypes import UTCDateTime, to_utc
from piseduce.protocol import MonitoringOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["monitoring"])

MAX_WINDOW = dt.timedelta(days=31)
MAX_POINTS = 500
UNITS = {"power": "W", "temperature": "°C"}
PERIOD_RE = r"^[1-9][0-9]{0,3}[mhd]$"
PERIOD_UNITS = {"m": 60, "h": 3600, "d": 86400}
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
Kind = Literal["power", "temperature"]


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def window(since: dt.datetime | None, period: str | None, now: dt.datetime) -> dt.datetime:
    if since is not None and period is not None:
        raise HTTPException(422, "give either since or period, not both")
    if since is not None:
        try:
            start = to_utc(since)
        except ValueError:
            raise HTTPException(422, "since: a time between 2000 and now") from None
    else:
        text = period or "1h"
        if not re.match(PERIOD_RE, text):
            raise HTTPException(422, "period: a number and a unit m, h or d (e.g. 30m, 6h, 7d)")
        start = now - dt.timedelta(seconds=int(text[:-1]) * PERIOD_UNITS[text[-1]])
    if start < EARLIEST or now - start > MAX_WINDOW:
        raise HTTPException(422, f"the window is at most {MAX_WINDOW.days} days back from now")
    if start >= now:
        raise HTTPException(422, "since must be in the past")
    return start


def _bucket(dialect: str, start: dt.datetime, step: float) -> ColumnElement[Any]:
    if dialect == "sqlite":
        # UTCDateTime keeps naive UTC text on SQLite, which julianday() reads.
        origin = start.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
        seconds = (func.julianday(Sample.time) - func.julianday(origin)) * 86400.0
    else:
        seconds = extract("epoch", Sample.time - literal(start, UTCDateTime()))
    return cast(func.floor(seconds / step), Integer)


def series(
    sessions: sessionmaker[Session], kind: str, start: dt.datetime, end: dt.datetime, node: str | None
) -> tuple[float, list[dict[str, Any]]]:
    step = max(1.0, (end - start).total_seconds() / MAX_POINTS)
    with sessions() as s:
        bucket = _bucket(s.get_bind().dialect.name, start, step).label("bucket")
        query = (
            select(Sample.subject, bucket, func.min(Sample.time, type_=UTCDateTime()), func.avg(Sample.value))
            .where(Sample.kind == kind, Sample.time >= start, Sample.time <= end)
            .group_by(Sample.subject, bucket)
            .order_by(Sample.subject, bucket)
        )
        if node is not None:
            query = query.where(Sample.subject == node)
        out: dict[str, dict[str, Any]] = {}
        for subject, _b, t, v in s.execute(query):
            item = out.setdefault(subject, {"subject": subject, "t": [], "v": []})
            item["t"].append(iso(t))
            item["v"].append(round(float(v), 3))
    return step, list(out.values())


class MonitoringQuery(BaseModel):
    # Unknown parameters are refused: a misspelt `perod=6h` must not silently answer one hour.
    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field(description="power (W per node) or temperature (°C per node)")
    since: dt.datetime | None = Field(
        default=None, description="Start of the window (ISO-8601; UTC if no zone)"
    )
    period: str | None = Field(
        default=None, pattern=PERIOD_RE, description="Window back from now: 30m, 1h, 6h, 24h, 7d (default 1h)"
    )
    node: str | None = Field(default=None, min_length=1, max_length=128, description="Only this node")


@router.get("/monitoring", response_model=MonitoringOut)
async def monitoring(state: StateDep, _caller: CallerDep, q: Annotated[MonitoringQuery, Query()]) -> Any:
    """Power or temperature series of every node over a window, at most 500 points per series."""
    now = dt.datetime.now(dt.UTC)
    start = window(q.since, q.period, now)
    step, found = await db(series, state.sessions, q.kind, start, now, q.node)
    return JSONResponse(
        {
            "kind": q.kind,
            "unit": UNITS[q.kind],
            "since": iso(start),
            "until": iso(now),
            "step_seconds": round(step, 3),
            "series": found,
        }
    )


class MonitoringCollector(Collector):
    """The latest sample of every node, read at scrape time. Samples older than three periods are
    left out: a stopped monitor must not look like steady boards. So are those not from the
    newest round (all samples of a round share its time): a board powered off is no longer
    measured, and its last temperature is not its temperature now."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    def _latest(self) -> tuple[list[tuple[str, str, float]], dict[str, dict[str, Any]]]:
        period = self.state.config.monitor_period_seconds
        fresh = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=max(3 * period, 60.0))
        with self.state.sessions() as s:
            newest = (
                select(Sample.kind, Sample.subject, func.max(Sample.time).label("t"))
                .where(Sample.time >= fresh)
                .group_by(Sample.kind, Sample.subject)
                .subquery()
            )
            rows = s.execute(
                select(Sample.kind, Sample.subject, Sample.value, Sample.time).join(
                    newest,
                    (Sample.kind == newest.c.kind)
                    & (Sample.subject == newest.c.subject)
                    & (Sample.time == newest.c.t),
                )
            ).all()
            attrs = {
                n.name: dict(n.attrs or {}) for n in s.scalars(select(Node).where(Node.present.is_(True)))
            }
        times: list[dt.datetime] = [r[3] for r in rows]
        last_round = max(times, default=None)
        return [(r[0], r[1], float(r[2])) for r, t in zip(rows, times, strict=True) if t == last_round], attrs

    def collect(self) -> Iterable[GaugeMetricFamily]:
        power = GaugeMetricFamily(
            "piseduce_port_power_watts", "PoE power drawn on a switch port", labels=["switch", "port", "node"]
        )
        temp = GaugeMetricFamily(
            "piseduce_node_temperature_celsius", "SoC temperature of a node", labels=["node"]
        )
        try:
            latest, attrs = self._latest()
        except OperationalError:
            log.warning("metrics: database unavailable", exc_info=True)
            return []
        seen: set[tuple[str, str]] = set()
        for kind, subject, value in sorted(latest):
            if (kind, subject) in seen:  # two samples with the same newest time: keep one
                continue
            seen.add((kind, subject))
            if kind == "power":
                a = attrs.get(subject, {})
                power.add_metric([str(a.get("switch", "")), str(a.get("port", "")), subject], value)
            elif kind == "temperature":
                temp.add_metric([subject], value)
        return [power, temp]
