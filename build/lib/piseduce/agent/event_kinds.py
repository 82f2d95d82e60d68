"""What an event of the agent's log written before migration 0008 means for the user it concerns
(protocol_events.EventKind). Since that migration every event carries its kind and actor, set where
it is written (actions.add_event); this reading of the sentences serves only the older rows. It
decides from the event's structured fields (level, the action's process, the node) and
the fixed sentences the engine and the API write (actions.add_event's callers): the rules are
data, tried in order, and tests/test_agent_event_feed.py drives the real code paths that write
each sentence, so a changed sentence fails there rather than silently notifying nobody."""

from __future__ import annotations

import re
from dataclasses import dataclass

from piseduce.protocol_events import EventKind

# The processes whose end the user is told about as a deployment.
DEPLOYS = ("deploy", "redeploy")

# Someone acting on a reservation: "destroy requested by x", "deployment of E requested by x",
# "cancelled by x", "<node> was powered off by the administrator x; ...".
ACTOR_RES = (
    re.compile(r"requested by (?P<actor>[\w.+\-@]+)$"),
    re.compile(r"^cancelled by (?P<actor>[\w.+\-@]+)$"),
    re.compile(r"by the administrator (?P<actor>[\w.+\-@]+)(?:;|$)"),
)
# An administrator marking a node broken (admin.py), or a failed destroy doing it (outcome.py).
BROKEN_RES = (
    re.compile(r"^node (?P<node>\S+): \w+ → broken by "),
    re.compile(r" is marked broken until an administrator checks it"),
)


@dataclass(frozen=True)
class Kind:
    kind: EventKind
    actor: str = ""


def actor_of(message: str) -> str:
    for pattern in ACTOR_RES:
        m = pattern.search(message)
        if m:
            return m["actor"]
    return ""


def classify(message: str, level: str, process: str, owner: str | None) -> Kind:
    """The kind of one event; `owner` None for an event of no reservation (a node's)."""
    if any(p.search(message) for p in BROKEN_RES):
        return Kind(EventKind.NODE_BROKEN)
    if owner is None:
        return Kind(EventKind.OTHER)
    if process in DEPLOYS and message == f"{process} finished":
        return Kind(EventKind.DEPLOY_DONE)
    if level == "error" and (process in DEPLOYS or not process):
        # A failed step of a deployment, or a deployment refused at its start (node unavailable).
        return Kind(EventKind.DEPLOY_FAILED)
    if (process == "destroy" and message == "destroy finished") or message.startswith("reservation ended ("):
        return Kind(EventKind.SLOT_ENDED)
    actor = actor_of(message)
    if actor and actor != owner:
        # Only an administrator may act on somebody else's reservation (auth.Caller.may_see).
        return Kind(EventKind.ADMIN_ACTION, actor)
    return Kind(EventKind.OTHER)
