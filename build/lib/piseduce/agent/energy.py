"""Energy per reservation (issue 17): the PoE power samples of a reservation's node over its time,
integrated by the trapezoid rule — watt-hours, the time-weighted mean and the peak in watts.

While a reservation lasts it is measured on read (one indexed range of `samples`). When it ends
(any write that moves it to ended or cancelled), the total is written into the reservation itself
(`driver_state["energy"]`, in the same flush), so the samples' retention (monitor.purge) never
erases a finished reservation's figure. Only what was sampled counts: no sample, no figure (a
Grid'5000 or IoT-LAB node has no PoE samples); between the window's edges and the first / last
sample nothing is extrapolated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from piseduce.agent.lifecycle import FINAL_STATUSES
from piseduce.agent.models import Reservation, Sample

KEY = "energy"  # in Reservation.driver_state


@dataclass(frozen=True)
class Energy:
    wh: float
    mean_w: float
    peak_w: float
    samples: int
    seconds: float  # from the first sample to the last
    final: bool = False  # written when the reservation ended (not measured on read)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def integrate(samples: Sequence[tuple[dt.datetime, float]]) -> Energy | None:
    """The trapezoid rule over (time, W) samples in time order; None without a sample."""
    if not samples:
        return None
    joules = 0.0
    for (t0, w0), (t1, w1) in zip(samples, samples[1:], strict=False):
        joules += (w0 + w1) / 2 * (t1 - t0).total_seconds()
    seconds = (samples[-1][0] - samples[0][0]).total_seconds()
    peak = max(w for _, w in samples)
    mean = joules / seconds if seconds > 0 else samples[0][1]
    return Energy(round(joules / 3600, 4), round(mean, 3), round(peak, 3), len(samples), seconds)


def measure(s: Session, node: str, start: dt.datetime, end: dt.datetime) -> Energy | None:
    """The node's power samples in [start, end], integrated (the (kind, subject, time) index)."""
    rows = s.execute(
        select(Sample.time, Sample.value)
        .where(Sample.kind == "power", Sample.subject == node, Sample.time >= start, Sample.time <= end)
        .order_by(Sample.time)
    ).all()
    return integrate([(t, float(v)) for t, v in rows])


def stored(r: Reservation) -> Energy | None:
    data = (r.driver_state or {}).get(KEY)
    if not isinstance(data, dict):
        return None
    try:
        return Energy(**{**data, "final": True})
    except TypeError:
        return None


def of(s: Session, r: Reservation, now: dt.datetime) -> Energy | None:
    """What the reservation used: its stored total once ended, else measured up to now."""
    if r.status in FINAL_STATUSES:
        return stored(r)
    if r.start > now:
        return None
    return measure(s, r.node_name, r.start, min(r.end, now))


LIVE_MAX = 200  # running reservations of one list measured on read (one indexed range each)


def live(s: Session, rows: Sequence[Reservation], now: dt.datetime) -> dict[int, Energy]:
    """The energy so far of the running reservations among `rows` (begun, not ended), by id; a
    list with more than LIVE_MAX of them shows only the ended ones' stored totals."""
    running = [r for r in rows if r.status not in FINAL_STATUSES and r.start <= now]
    if len(running) > LIVE_MAX:
        return {}
    out = {}
    for r in running:
        used = measure(s, r.node_name, r.start, min(r.end, now))
        if used is not None:
            out[r.id] = used
    return out


def settle(session: Session) -> None:
    """Before a flush (models.py registers it): every reservation moving to a final status gets
    its total written in."""
    for obj in list(session.dirty) + list(session.new):
        if not isinstance(obj, Reservation) or obj.status not in FINAL_STATUSES:
            continue
        if KEY in (obj.driver_state or {}) or not inspect(obj).attrs.status.history.added:
            continue
        now = dt.datetime.now(dt.UTC)
        if obj.start is None or obj.start > now:  # cancelled before it began: nothing used
            continue
        with session.no_autoflush:
            used = measure(session, obj.node_name, obj.start, min(obj.end, now))
        if used is not None:
            obj.driver_state = {**(obj.driver_state or {}), KEY: used.as_dict()}

