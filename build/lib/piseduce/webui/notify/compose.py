"""The words and the webhook payload of each notification, from what the feed and the agent
said. One function per kind of notice; each returns a `Draft` for one user, whose `key` is what
the notice is about (never when it was read): the outbox sends one message per key and channel."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from piseduce.protocol import DEPLOYED, FAILED, ReservationOut
from piseduce.protocol_events import FeedEvent
from piseduce.webui.notify.kinds import Notice


@dataclass(frozen=True)
class Draft:
    email: str  # the user's (the agent's owner name)
    notice: Notice
    key: str
    subject: str
    body: str
    payload: dict[str, Any] = field(default_factory=dict)


def _utc(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if t is not None else ""


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if t is not None else None


def _payload(notice: Notice, agent: str, **data: Any) -> dict[str, Any]:
    return {"event": notice.value, "agent": agent, **data}


def _bin_words(bin_name: str) -> str:
    return f"bin {bin_name!r}" if bin_name else "your reservation"


def deploy_done(
    agent_id: int,
    agent: str,
    user: str,
    bin_name: str,
    members: Sequence[ReservationOut],
    lines: dict[int, str],
) -> Draft:
    """The deployment of a whole bin ended (every node deployed or failed)."""
    ids = sorted(r.id for r in members)
    ok = [r for r in members if r.status == DEPLOYED]
    bad = [r for r in members if r.status == FAILED]
    rows = [f"  {r.node}: {lines.get(r.id) or '(no connection line yet: see Manage)'}" for r in ok]
    rows += [f"  {r.node}: FAILED - {r.error or 'see Manage'}" for r in bad]
    body = (
        f"The deployment of {_bin_words(bin_name)} on {agent} finished: {len(ok)} node(s) deployed"
        + (f", {len(bad)} failed" if bad else "")
        + ".\n\n"
        + "\n".join(rows)
        + "\n"
    )
    nodes = [
        {
            "node": r.node,
            "reservation": r.id,
            "status": r.status,
            "connection": lines.get(r.id, ""),
            "error": r.error,
        }
        for r in members
    ]
    return Draft(
        user,
        Notice.DEPLOY_DONE,
        f"deploy_done:{agent_id}:{user}:{bin_name}:{','.join(map(str, ids))}",
        f"[PiSeduce] {bin_name or 'deployment'} deployed on {agent}",
        body,
        _payload(Notice.DEPLOY_DONE, agent, bin=bin_name, nodes=nodes),
    )


def deploy_failed(agent_id: int, agent: str, user: str, ev: FeedEvent) -> Draft:
    rid = ev.reservation_id
    body = (
        f"The deployment of {ev.node} ({_bin_words(ev.bin)}) on {agent} failed:\n\n  {ev.message}\n\n"
        "Manage shows its events; Redeploy tries again, Destroy gives the node back.\n"
    )
    return Draft(
        user,
        Notice.DEPLOY_FAILED,
        f"deploy_failed:{agent_id}:{rid}:{ev.action_id or 'start'}",
        f"[PiSeduce] deployment of {ev.node} failed",
        body,
        _payload(
            Notice.DEPLOY_FAILED,
            agent,
            bin=ev.bin,
            node=ev.node,
            reservation=rid,
            reason=ev.message,
            time=_iso(ev.time),
        ),
    )


def slot_ended(
    agent_id: int, agent: str, user: str, bin_name: str, members: Sequence[ReservationOut]
) -> Draft:
    ids = sorted(r.id for r in members)
    nodes = sorted(r.node for r in members)
    end = max(r.end for r in members)
    body = (
        f"The slot of {_bin_words(bin_name)} on {agent} ended at {_utc(end)}: "
        f"{', '.join(nodes)} {'was' if len(nodes) == 1 else 'were'} wiped and given back.\n"
    )
    return Draft(
        user,
        Notice.SLOT_ENDED,
        f"slot_ended:{agent_id}:{user}:{bin_name}:{','.join(map(str, ids))}",
        f"[PiSeduce] {bin_name or 'reservation'} ended on {agent}",
        body,
        _payload(Notice.SLOT_ENDED, agent, bin=bin_name, nodes=nodes, reservations=ids, end=_iso(end)),
    )


def admin_action(agent_id: int, agent: str, user: str, ev: FeedEvent) -> Draft:
    body = (
        f"An administrator ({ev.actor}) acted on your reservation of {ev.node} "
        f"({_bin_words(ev.bin)}) on {agent}:\n\n  {ev.message}\n"
    )
    return Draft(
        user,
        Notice.ADMIN_ACTION,
        f"admin_action:{agent_id}:{ev.id}",
        f"[PiSeduce] an administrator acted on {ev.node}",
        body,
        _payload(
            Notice.ADMIN_ACTION,
            agent,
            node=ev.node,
            reservation=ev.reservation_id,
            actor=ev.actor,
            message=ev.message,
            time=_iso(ev.time),
        ),
    )


def node_broken(agent_id: int, agent: str, user: str, ev: FeedEvent) -> Draft:
    body = (
        f"{ev.node}, which you hold on {agent}, was marked broken:\n\n  {ev.message}\n\n"
        "An administrator has to check it before it can be deployed again.\n"
    )
    return Draft(
        user,
        Notice.NODE_BROKEN,
        f"node_broken:{agent_id}:{ev.id}:{user}",
        f"[PiSeduce] {ev.node} is broken",
        body,
        _payload(Notice.NODE_BROKEN, agent, node=ev.node, message=ev.message, time=_iso(ev.time)),
    )


def slot_ending(
    agent_id: int,
    agent: str,
    user: str,
    bin_name: str,
    members: Sequence[ReservationOut],
    minutes: int,
    now: dt.datetime,
) -> Draft:
    end = min(r.end for r in members)
    left = max(0, round((end - now).total_seconds() / 60))
    nodes = sorted(r.node for r in members)
    body = (
        f"The slot of {_bin_words(bin_name)} on {agent} ({', '.join(nodes)}) ends at {_utc(end)}, "
        f"in about {left} minute(s). Extend it on Manage if the next booking allows, or save your "
        "data now: the nodes are wiped when it ends.\n"
    )
    return Draft(
        user,
        Notice.SLOT_ENDING,
        f"slot_ending:{agent_id}:{user}:{bin_name}:{_iso(end)}:{minutes}",
        f"[PiSeduce] {bin_name or 'reservation'} ends in {left} min on {agent}",
        body,
        _payload(Notice.SLOT_ENDING, agent, bin=bin_name, nodes=nodes, end=_iso(end), minutes=minutes),
    )


def account_approved(user_id: int, user: str, url: str) -> Draft:
    body = f"Your PiSeduce account {user} was approved: you can log in{' at ' + url if url else ''}.\n"
    return Draft(
        user,
        Notice.ACCOUNT_APPROVED,
        f"account_approved:{user_id}",
        "[PiSeduce] your account was approved",
        body,
        _payload(Notice.ACCOUNT_APPROVED, "", user=user),
    )
