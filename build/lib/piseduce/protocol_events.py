"""The agents' event feed (`GET /api/admin/events`): every event of an agent's log in id order,
each with what the web UI's notifications need to know without asking again — who it concerns
(the reservation's owner, or the holders of a node that went broken), the reservation's bin, end
and connection line, and the event's kind (`EventKind`) classified once by the agent."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import Field

from piseduce.protocol import JsonDict, Label, ShortText, Text, Wire


class EventKind(StrEnum):
    """What an event means for the user it concerns; `other` events notify nobody."""

    DEPLOY_DONE = "deploy_done"
    DEPLOY_FAILED = "deploy_failed"
    SLOT_ENDED = "slot_ended"
    ADMIN_ACTION = "admin_action"
    NODE_BROKEN = "node_broken"
    OTHER = "other"


class FeedEvent(Wire):
    id: int = Field(ge=1)
    time: dt.datetime
    kind: EventKind = EventKind.OTHER
    level: Label = "info"
    step: Label = ""
    message: Text = ""
    node: Label = ""
    reservation_id: int | None = None
    action_id: int | None = None
    process: Label = ""  # the action that wrote it, if any
    # The users it concerns: the reservation's owner, or every holder of a node gone broken.
    users: list[Label] = Field(default_factory=list, max_length=1000)
    actor: Label = ""  # who acted, for admin_action
    bin: Label = ""
    status: Label = ""
    end: dt.datetime | None = None
    connection: JsonDict = Field(default_factory=dict)


class EventFeed(Wire):
    events: list[FeedEvent] = Field(default_factory=list, max_length=10_000)
    # The highest event id of the agent's log now (a new reader starts there).
    last_id: int = Field(default=0, ge=0)
    note: ShortText = ""


