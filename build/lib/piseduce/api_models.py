"""What the users' API (`/api/v1` of the web UI, docs/api.md) answers: one definition of that
contract, used by the web UI's routes (their OpenAPI spec is generated from these classes, so their
names and fields are the spec's) and by the Python client and pisctl, which read answers with them.

It imports pydantic only: the client installs and runs on a laptop without the server's packages.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Scope = Literal["read", "write"]


def _no_additional_properties(schema: dict[str, Any]) -> None:
    schema.pop("additionalProperties", None)


class ApiModel(BaseModel):
    """An answer. Fields a newer web UI adds are kept, not refused (`extra="allow"`), so an older
    client reads it and `pisctl --json` passes them on. The spec says nothing of them: a JSON
    Schema without `additionalProperties` already allows them, and the spec stays what it was."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_no_additional_properties)

    def as_json(self) -> dict[str, Any]:
        """What the API sent (extra fields included, defaults the server left out not added)."""
        return self.model_dump(mode="json", exclude_unset=True)


class ErrorOut(ApiModel):
    detail: str = Field(description="What went wrong, in one sentence, and what to do next")


class MeOut(ApiModel):
    email: str
    role: Literal["user", "admin"]
    zone: str | None = Field(default=None, description="The time zone of the caller's browser, if known")
    via: Literal["token", "session"]
    scope: Scope


class AgentOut(ApiModel):
    name: str
    type: str = Field(description="raspberry, g5k or iot-lab")
    site: str
    state: str = Field(description="up, down, unauthorized or error")
    error: str = ""
    features: list[str]
    labels: dict[str, str]


class NodeOut(ApiModel):
    agent: str
    name: str
    type: str
    status: str
    properties: dict[str, Any]


class SlotOut(ApiModel):
    start: dt.datetime
    end: dt.datetime
    mine: bool
    bin: str | None = None


class NodeRefOut(ApiModel):
    agent: str
    node: str


class NextSlotOut(ApiModel):
    """The earliest start where a request could be booked all at once, and the nodes a booking
    then would take (a booking by count may still pick others of the same kind)."""

    start: dt.datetime
    end: dt.datetime
    hours: float
    nodes: list[NodeRefOut]


class NodeScheduleOut(ApiModel):
    agent: str
    node: str
    slots: list[SlotOut]


class GatewayOut(ApiModel):
    """The way in from outside the lab through the agent's SSH gateway (`pisctl ssh-config`)."""

    host: str
    port: int
    user: str
    host_key: str = Field(description="The gateway's SSH host key (a known_hosts line's key)")
    command: str = Field(description="ssh -J GATEWAY pi@ADDRESS")
    ssh_config: str = Field(description="A ~/.ssh/config block: the gateway's Host, then the board's")
    known_hosts: str = Field(description="The lines the block's UserKnownHostsFile holds")
    known_hosts_file: str = Field(description="Where the block looks for them")


class ConnectionOut(ApiModel):
    host: str
    port: int = 22
    user: str
    host_key: str | None = Field(
        default=None, description="The node's SSH host key (a known_hosts line's key)"
    )
    host_key_fingerprint: str | None = None
    jump: str | None = Field(default=None, description="The jump host to go through, if any")
    command: str = Field(default="", description="The ssh command, for people")
    details: dict[str, Any] = Field(default_factory=dict, description="What else the agent says")
    gateway: GatewayOut | None = Field(
        default=None, description="Through the agent's SSH gateway, when it runs one (from outside the lab)"
    )


class EventOut(ApiModel):
    n: int = Field(description="The event's number in this reservation's list, from 1")
    time: str
    level: str
    step: str
    message: str


class EnergyOut(ApiModel):
    """What the node drew during the reservation (PoE power samples, Raspberry Pi)."""

    wh: float = Field(description="Watt-hours (trapezoid rule over the samples)")
    mean_w: float = Field(description="Time-weighted mean power, W")
    peak_w: float = Field(description="Highest sample, W")
    samples: int
    seconds: float = Field(description="From the first sample to the last")
    final: bool = Field(description="True once stored at the reservation's end; else measured up to now")


class ReservationOut(ApiModel):
    key: str = Field(description="'<agent>/<id>': how the API names this reservation")
    agent: str
    id: int
    node: str
    type: str
    owner: str
    bin: str
    status: str
    step: str
    step_label: str = ""
    progress: float | None = Field(description="0..1 while a process runs; null when none runs")
    error: str = ""
    start: dt.datetime
    end: dt.datetime
    connection: ConnectionOut | None
    actions: list[str]
    energy: EnergyOut | None = Field(
        default=None, description="Raspberry Pi: what the node drew; null when not sampled"
    )

    @property
    def step_words(self) -> str:
        """The running step in words (its label when the agent gives one)."""
        return self.step_label or self.step


class ReservationDetailOut(ReservationOut):
    events: list[EventOut]


class FormFieldOut(ApiModel):
    name: str
    label: str
    kind: str
    choices: list[str]
    required: bool
    help: str
    default: Any = None


class EnvironmentOut(ApiModel):
    agent: str
    name: str
    description: str
    default: bool
    owner: str | None = None


class SshKeyOut(ApiModel):
    fingerprint: str
    kind: str
    comment: str
    line: str


class CredentialsOut(ApiModel):
    kind: Literal["g5k", "iotlab"]
    set: bool
    login: str = Field(description="The testbed login; the password is never shown")
