"""Pydantic models of the agent API (DESIGN §5.1): every input and output goes through them.

This module is the contract between the agent and the web UI; change it only compatibly.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from piseduce.dbtypes import to_utc

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:+-]*$")
]
BinName = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9 ._-]*$")]
PropKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
PropValue = Annotated[str, StringConstraints(max_length=256)] | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- info


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Info(BaseModel):
    name: str
    node_type: str
    site: str
    version: str
    needs_credentials: bool = False


class NodeOut(BaseModel):
    name: str
    properties: dict[str, Any]
    status: str


# ---------------------------------------------------------------- schedule


class BusySlot(BaseModel):
    start: dt.datetime
    end: dt.datetime
    # Only for admins and for the owner's own bookings; None otherwise.
    owner: str | None = None
    mine: bool = False
    reservation_id: int | None = None
    status: str = ""
    reason: str = ""  # "busy outside PiSeduce" for remote jobs


class ScheduleOut(BaseModel):
    start: dt.datetime
    end: dt.datetime
    nodes: dict[str, list[BusySlot]]


# ---------------------------------------------------------------- reservations


class Filter(Strict):
    """Either named nodes, or a count of nodes matching properties (all must match; numbers
    may be given as {"min": x, "max": y})."""

    count: int | None = Field(default=None, ge=1, le=1000)
    properties: dict[PropKey, PropValue | dict[Literal["min", "max"], float]] = Field(
        default_factory=dict, max_length=32
    )
    nodes: list[Name] | None = Field(default=None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> Filter:
        if self.nodes is not None and (self.count is not None or self.properties):
            raise ValueError("give either 'nodes' or 'count' with 'properties', not both")
        if self.nodes is None and self.count is None:
            raise ValueError("give 'nodes' (a list of node names) or 'count'")
        if self.nodes is not None and len(set(self.nodes)) != len(self.nodes):
            raise ValueError("a node is named twice")
        return self


class ReservationRequest(Strict):
    filters: list[Filter] = Field(min_length=1, max_length=32)
    start: dt.datetime | Literal["now"] = "now"
    duration_hours: float = Field(gt=0, le=24 * 366)
    bin: BinName = ""

    @field_validator("start")
    @classmethod
    def _aware(cls, v: dt.datetime | str) -> dt.datetime | str:
        if isinstance(v, dt.datetime) and v.tzinfo is None:
            raise ValueError("start must carry a time zone (ISO-8601 with Z or an offset)")
        return to_utc(v) if isinstance(v, dt.datetime) else v


class EventOut(BaseModel):
    time: dt.datetime
    level: str
    step: str
    message: str


class ReservationOut(BaseModel):
    id: int
    node: str
    owner: str
    bin: str
    start: dt.datetime
    end: dt.datetime
    status: str
    process: str = ""
    step: str = ""
    step_label: str = ""
    step_index: int = 0
    step_count: int = 0
    progress: int = 0
    error: str = ""
    events: list[EventOut] = Field(default_factory=list)
    connection: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)  # os_password only for its owner
    node_properties: dict[str, Any] = Field(default_factory=dict)
    actions: list[str] = Field(default_factory=list)  # what can be asked now


class BookingOut(BaseModel):
    reservations: list[ReservationOut]


# 4 MiB once decoded: the largest file a deploy form may carry (an IoT-LAB firmware).
MAX_UPLOAD_B64 = 4 * 1024 * 1024 * 4 // 3 + 4


class DeployRequest(BaseModel):
    """The deploy form's values; each driver validates its own fields."""

    model_config = ConfigDict(extra="allow")

    environment: str | None = Field(default=None, max_length=128)
    part_size: str | None = Field(default=None, max_length=16)
    os_password: str | None = Field(default=None, max_length=128)
    ssh_keys: list[Annotated[str, StringConstraints(max_length=16384)]] = Field(
        default_factory=list, max_length=32
    )
    bin: BinName | None = None

    @model_validator(mode="after")
    def _bounded_extras(self) -> DeployRequest:
        extra = self.model_extra or {}
        if len(extra) > 32:
            raise ValueError("too many fields")
        uploads = [key for key in extra if key.endswith("_file")]
        if len(uploads) > 1:
            raise ValueError("one uploaded file per deployment")
        for key, value in extra.items():
            # A form field of kind "file" arrives base64-encoded in a field named *_file.
            limit = MAX_UPLOAD_B64 if key.endswith("_file") else 16384
            if len(key) > 64 or not isinstance(value, str | int | float | bool | None) or (
                isinstance(value, str) and len(value) > limit
            ):
                raise ValueError(f"field {key!r}: expected a short string, number or boolean")
        return self


class ExtendRequest(Strict):
    hours: float = Field(default=0, ge=0, le=24 * 366)  # 0 = by the reservation's own duration


class RegisterEnvRequest(Strict):
    # Checked by the route (env_factory.NAME_RE) so that a bad name gets a sentence, not a pattern.
    name: str = Field(max_length=256, description="The new environment's name")


class AcceptedOut(BaseModel):
    id: int
    status: str
    process: str = ""
    message: str = ""


# ---------------------------------------------------------------- admin


class NodeIn(Strict):
    name: Name
    ip: Annotated[str, StringConstraints(max_length=255)] = ""
    switch: Name | None = None
    port: int | None = Field(default=None, ge=0, le=4096)
    ssh_port: int = Field(default=22, ge=1, le=65535)
    model: Annotated[str, StringConstraints(max_length=64)] = ""
    serial: Annotated[str, StringConstraints(max_length=64, pattern=r"^[0-9A-Za-z]*$")] = ""
    mac: Annotated[
        str, StringConstraints(max_length=17, pattern=r"^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5})?$")
    ] = ""
    host_key: Annotated[str, StringConstraints(max_length=4096)] = ""
    properties: dict[PropKey, PropValue] = Field(default_factory=dict, max_length=32)
    status: Literal["available", "maintenance", "broken"] = "available"


class NodeStatusIn(Strict):
    status: Literal["available", "maintenance", "broken"]


class AdminNodeOut(BaseModel):
    """A node as admins see it: what users see plus the driver's attributes (secrets removed)."""

    name: str
    ip: str
    status: str
    present: bool
    properties: dict[str, Any]
    attrs: dict[str, Any]


class ActionOut(BaseModel):
    id: int
    reservation_id: int | None
    node: str = ""
    owner: str = ""
    process: str
    status: str
    step: str
    progress: int
    error: str
    locked_by: str | None = None
    created_at: dt.datetime
