"""The soak's invariants, read from where the truth is: the agents' databases and the Grid'5000
emulator's jobs (never from what the load believes).

- stuck: a reservation not final once everything settled, or a final one with an action still open;
- lost: a reservation the API accepted that its database does not hold (or the users saw vanish,
  or saw go backwards: `Ledger`);
- failures: every failed action and every unavailable-node failure has its reason;
- double bookings: two active reservations of one node whose holds `[start, busy_until)` overlap,
  sampled all along the run, or actions of two reservations live on one node at once (a destroy
  running past its slot while the next reservation deploys: `held_twice`);
- orphan jobs: a live OAR job of this agent's naming whose reservation is over (past a grace for
  OAR's own kill delay) or holds another job, or that no reservation names, sampled all along
  (a leaked job of a short reservation would otherwise end with its walltime unseen).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from helpers.soak_load import Ledger
from helpers.soak_site import SoakSite
from piseduce.agent.lifecycle import ACTIVE_STATUSES, FINAL_STATUSES
from piseduce.agent.models import ACTION_FAILED, ACTION_OPEN, Action, Event, Reservation
from piseduce.db import make_engine, session_factory

ORPHAN_GRACE = dt.timedelta(seconds=20)


@dataclass
class Figures:
    accepted: int = 0
    in_databases: int = 0
    unknown_to_users: int = 0
    deployed: int = 0
    failed: int = 0
    failed_without_reason: list[str] = field(default_factory=list)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    ended: int = 0
    stuck: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    double_bookings: set[str] = field(default_factory=set)
    orphan_jobs: set[str] = field(default_factory=set)
    samples: int = 0


class Databases:
    def __init__(self, site: SoakSite) -> None:
        self.site = site
        self.engines: dict[str, Engine] = {
            k: make_engine(f"sqlite:///{a.db_path}") for k, a in site.agents.items()}
        self.sessions: dict[str, sessionmaker[Session]] = {
            k: session_factory(e) for k, e in self.engines.items()}

    def close(self) -> None:
        for e in self.engines.values():
            e.dispose()

    def open_reservations(self) -> list[str]:
        out = []
        for agent, sessions in self.sessions.items():
            with sessions() as s:
                for r in s.scalars(select(Reservation).where(Reservation.status.not_in(FINAL_STATUSES))):
                    out.append(f"{agent} #{r.id} {r.node_name} {r.status} (ends {r.end:%H:%M:%S})")
                held = select(Action).join(Reservation, Action.reservation_id == Reservation.id).where(
                    Action.status.in_(ACTION_OPEN), Reservation.status.in_(FINAL_STATUSES))
                for a in s.scalars(held):
                    status = a.reservation.status if a.reservation else "?"
                    out.append(f"{agent} #{a.reservation_id}: {a.process} action {a.id} still {a.status} "
                               f"at step {a.step_name!r} of an {status} reservation")
        return out

    # ------------------------------------------------------------ sampled during the run

    def sample(self, figures: Figures) -> None:
        figures.samples += 1
        for agent, sessions in self.sessions.items():
            with sessions() as s:
                figures.double_bookings |= overlaps(s, agent) | held_twice(s, agent)
        figures.orphan_jobs |= self.orphans()

    def orphans(self) -> set[str]:
        g5k = self.site.agents["g5k"]
        pattern = re.compile(rf"^piseduce-{re.escape(g5k.name)}-r(\d+)$")
        now = dt.datetime.now(dt.UTC)
        found = set()
        jobs = self.site.g5k_jobs()
        with self.sessions["g5k"]() as s:
            for job in jobs:
                m = pattern.match(str(job.get("name") or ""))
                if m is None:
                    continue
                r = s.get(Reservation, int(m.group(1)))
                if r is None:
                    found.add(f"job {job['uid']} ({job['name']}): no such reservation")
                elif r.status in FINAL_STATUSES and now - r.updated_at > ORPHAN_GRACE:
                    found.add(f"job {job['uid']}: reservation #{r.id} {r.status} "
                              f"since {r.updated_at:%H:%M:%S}")
                elif r.status in ACTIVE_STATUSES:
                    attached = (r.driver_state or {}).get("job_id")
                    age = now - dt.datetime.fromtimestamp(float(job.get("submitted_at") or 0), dt.UTC)
                    if attached is not None and str(attached) != str(job["uid"]) and age > ORPHAN_GRACE:
                        found.add(f"job {job['uid']}: reservation #{r.id} holds job {attached} instead")
        return found

    # ------------------------------------------------------------ at the end

    def final(self, figures: Figures, ledger: Ledger) -> None:
        figures.accepted = ledger.accepted()
        figures.lost = [*ledger.lost, *(f"went backwards: {b}" for b in ledger.backwards)]
        figures.failed_without_reason = list(ledger.failed_without_reason)
        for agent, sessions in self.sessions.items():
            with sessions() as s:
                self._final_agent(agent, s, figures, ledger)
        figures.stuck = self.open_reservations()

    def _final_agent(self, agent: str, s: Session, figures: Figures, ledger: Ledger) -> None:
        rows = {r.id: r for r in s.scalars(select(Reservation))}
        for (a, rid), seen in ledger.seen.items():
            if a != agent:
                continue
            r = rows.get(rid)
            if r is None or r.owner != seen.owner:
                figures.lost.append(f"{agent} #{rid}: accepted for {seen.owner}, not in the database")
            else:
                figures.in_databases += 1
        figures.unknown_to_users += len([r for r in rows if (agent, r) not in ledger.seen])
        for r in rows.values():
            figures.cancelled += r.status == "cancelled"
            figures.ended += r.status == "ended"
        finished = {e.reservation_id for e in s.scalars(
            select(Event).where(Event.message == "deploy finished"))}
        figures.deployed += len(finished)
        failed_actions = list(s.scalars(select(Action).where(Action.status == ACTION_FAILED)))
        unavailable = list(s.scalars(select(Event).where(
            Event.level == "error", Event.action_id.is_(None), Event.reservation_id.is_not(None))))
        failed = {a.reservation_id for a in failed_actions} | {e.reservation_id for e in unavailable}
        figures.failed += len(failed)
        for a in failed_actions:
            if not a.error.strip():
                figures.failed_without_reason.append(
                    f"{agent} #{a.reservation_id}: {a.process} action {a.id}")
            figures.failure_reasons[f"{agent} {a.process}: {reason_kind(a.error)}"] += 1
        for e in unavailable:
            if not e.message.strip():
                figures.failed_without_reason.append(f"{agent} #{e.reservation_id}: event {e.id}")
            figures.failure_reasons[f"{agent}: {reason_kind(e.message)}"] += 1


def overlaps(s: Session, agent: str) -> set[str]:
    """Pairs of active reservations of one node whose holds overlap."""
    a, b = aliased(Reservation), aliased(Reservation)
    q = select(a.id, b.id, a.node_name).where(
        a.node_name == b.node_name, a.id < b.id,
        a.status.in_(ACTIVE_STATUSES), b.status.in_(ACTIVE_STATUSES),
        a.start < b.busy_until, b.start < a.busy_until,
    )
    return {f"{agent} {node}: #{x} and #{y}" for x, y, node in s.execute(q)}


def held_twice(s: Session, agent: str) -> set[str]:
    """Nodes on which actions of two reservations were live at once (an action is live from its
    creation to its last update, when it is over): the calendar's slots may not overlap and yet
    one reservation's destroy may still run when the next one starts; both then drive the board."""
    rows = s.execute(
        select(Reservation.node_name, Action.reservation_id, Action.id, Action.created_at, Action.updated_at,
               Action.status)
        .join(Reservation, Action.reservation_id == Reservation.id)
        .order_by(Reservation.node_name, Action.created_at)
    ).all()
    now = dt.datetime.now(dt.UTC)
    found: set[str] = set()
    live: dict[str, list[tuple[int, int, dt.datetime]]] = {}
    for node, rid, aid, begun, updated, status in rows:
        until = now if status in ACTION_OPEN else updated
        others = [(r, a) for r, a, end in live.get(node, []) if r != rid and end > begun]
        found |= {f"{agent} {node}: action {a} of #{r} and action {aid} of #{rid}" for r, a in others}
        live.setdefault(node, []).append((rid, aid, until))
    return found


def reason_kind(message: str) -> str:
    """A failure's reason without its numbers, so that alike ones count together."""
    text = re.sub(r"\d+(\.\d+)?", "N", message.strip())
    return text[:140] or "(no reason)"


def log_excerpts(folder: Path, needle: str = "Traceback", limit: int = 5) -> list[str]:
    """The first tracebacks in the processes' logs (a report's pointer to what went wrong)."""
    out: list[str] = []
    for log in sorted((folder / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if needle in line:
                out.append(f"{log.name}:{i + 1}: " + " | ".join(lines[i:i + 12])[-600:])
                if len(out) >= limit:
                    return out
    return out


def as_lines(f: Figures, ledger: Ledger, kills: dict[str, int], elapsed: float) -> list[str]:
    refused = ", ".join(f"{n} x {code}" for code, n in sorted(ledger.refused.items())) or "none"
    return [
        f"booking requests       {ledger.requests} (refused: {refused}; outcome unknown to the user "
        f"after a broken connection: {ledger.unknown_outcome})",
        f"reservations attempted {f.accepted} accepted by the APIs ({f.in_databases} of them found in the "
        f"databases, {f.unknown_to_users} more there from bookings whose answer was cut)",
        f"deployed               {f.deployed}",
        f"failed with a reason   {f.failed - len(f.failed_without_reason)} of {f.failed} failed",
        f"failed without reason  {len(f.failed_without_reason)}",
        f"stuck                  {len(f.stuck)}",
        f"lost                   {len(f.lost)}",
        f"orphan remote jobs     {len(f.orphan_jobs)} ({f.samples} samples)",
        f"double bookings        {len(f.double_bookings)}",
        f"ended / cancelled      {f.ended} / {f.cancelled}",
        "kills and restarts     " + ", ".join(f"{k}: {v}" for k, v in sorted(kills.items())),
        f"5xx answers            {len(ledger.server_errors)}",
        "connections cut        "
        + (", ".join(f"{k}: {n}" for k, n in sorted(ledger.broken.items())) or "none"),
        f"wall time              {elapsed:.0f} s",
    ]
