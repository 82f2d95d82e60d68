"""Pydantic models of what the agent API accepts (DESIGN §5.1): every request goes through them.

What it answers is the shared protocol (`piseduce.protocol`), which the web UI reads with the same
models. Both are the contract between the agent and the web UI; change them only compatibly.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from piseduce.agent.worded import Mac, Serial, Words
from piseduce.dbtypes import to_utc
from piseduce.jsonsafe import first_unsafe
from piseduce.numbers import StrictFloat, StrictInt, UnsignedFloat
from piseduce.repeats import first_repeat

Name = Annotated[str, StringConstraints(min_length=1, max_length=128), Words(
    r"^[A-Za-z0-9][A-Za-z0-9._@:+-]*$",
    "is not a valid name: letters, digits and . _ @ : + - only, starting with a letter or digit")]
BinName = Annotated[str, StringConstraints(max_length=64), Words(
    r"^[A-Za-z0-9 ._-]*$", "is not a valid bin name: letters, digits, spaces and . _ - only")]
PropKey = Annotated[str, StringConstraints(min_length=1, max_length=64), Words(
    r"^[A-Za-z0-9_.-]+$", "is not a valid property name: letters, digits and . _ - only")]
PropValue = Annotated[str, StringConstraints(max_length=256)] | int | float | bool


class Strict(BaseModel):
    """Every request body: unknown fields refused, and nothing JSON or the database cannot carry
    back (NaN, Infinity, lone surrogates) anywhere in it, free-form fields included."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _representable(cls, data: Any) -> Any:
        problem = first_unsafe(data)
        if problem:
            raise ValueError(problem)
        return data


# ---------------------------------------------------------------- reservations


class Filter(Strict):
    """Either named nodes, or a count of nodes matching properties (all must match; numbers
    may be given as {"min": x, "max": y})."""

    count: StrictInt | None = Field(default=None, ge=1, le=1000)
    properties: dict[PropKey, PropValue | dict[Literal["min", "max"], StrictFloat]] = Field(
        default_factory=dict, max_length=32
    )
    nodes: list[Name] | None = Field(default=None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> Filter:
        if self.nodes is not None and (self.count is not None or self.properties):
            raise ValueError("give either 'nodes' or 'count' with 'properties', not both")
        if self.nodes is None and self.count is None:
            raise ValueError("give 'nodes' (a list of node names) or 'count'")
        if self.nodes is not None and (again := first_repeat(self.nodes)) is not None:
            raise ValueError(f"node {again[:80]!r} is named twice: name each node once")
        return self


def _nodes_once(filters: list[Filter]) -> None:
    """One node named in two filters is one node asked for twice: refused, named."""
    again = first_repeat([n for f in filters for n in set(f.nodes or ())])
    if again is not None:
        raise ValueError(f"node {again[:80]!r} is named twice (in two filters): name each node once")


class ReservationRequest(Strict):
    filters: list[Filter] = Field(min_length=1, max_length=32)
    start: dt.datetime | Literal["now"] = "now"
    duration_hours: StrictFloat = Field(gt=0, le=24 * 366)
    bin: BinName = ""

    @model_validator(mode="after")
    def _each_node_once(self) -> Self:
        _nodes_once(self.filters)
        return self

    @field_validator("start")
    @classmethod
    def _aware(cls, v: dt.datetime | str) -> dt.datetime | str:
        if isinstance(v, dt.datetime) and v.tzinfo is None:
            raise ValueError("start must carry a time zone (ISO-8601 with Z or an offset)")
        return to_utc(v) if isinstance(v, dt.datetime) else v


class NextSlotRequest(Strict):
    """When could these filters be booked all at once for this long, at or after `after`?"""

    filters: list[Filter] = Field(min_length=1, max_length=32)
    after: dt.datetime | Literal["now"] = "now"
    duration_hours: StrictFloat = Field(gt=0, le=24 * 366)

    @model_validator(mode="after")
    def _each_node_once(self) -> Self:
        _nodes_once(self.filters)
        return self

    @field_validator("after")
    @classmethod
    def _aware(cls, v: dt.datetime | str) -> dt.datetime | str:
        if isinstance(v, dt.datetime) and v.tzinfo is None:
            raise ValueError("after must carry a time zone (ISO-8601 with Z or an offset)")
        return to_utc(v) if isinstance(v, dt.datetime) else v


# 4 MiB once decoded: the largest file a deploy form may carry (an IoT-LAB firmware).
MAX_UPLOAD_B64 = 4 * 1024 * 1024 * 4 // 3 + 4


class DeployRequest(Strict):
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
    hours: UnsignedFloat = Field(default=0, ge=0, le=24 * 366)  # 0 = by the reservation's own duration


class RegisterEnvRequest(Strict):
    # Checked by the route (env_factory.NAME_RE) so that a bad name gets a sentence, not a pattern.
    name: str = Field(max_length=256, description="The new environment's name")


# ---------------------------------------------------------------- admin


class NodeIn(Strict):
    name: Name
    ip: Annotated[str, StringConstraints(max_length=255)] = ""
    switch: Name | None = None
    port: StrictInt | None = Field(default=None, ge=0, le=4096)
    ssh_port: StrictInt = Field(default=22, ge=1, le=65535)
    model: Annotated[str, StringConstraints(max_length=64)] = ""
    serial: Serial = ""
    mac: Mac = ""
    host_key: Annotated[str, StringConstraints(max_length=4096)] = ""
    properties: dict[PropKey, PropValue] = Field(default_factory=dict, max_length=32)
    status: Literal["available", "maintenance", "broken"] = "available"


class NodeStatusIn(Strict):
    status: Literal["available", "maintenance", "broken"]


class NodePatchIn(Strict):
    """A change of a node: the fields given change, those omitted (or null) stay. A board's
    re-registration sends its description; the web UI sends a status."""

    status: Literal["available", "maintenance", "broken"] | None = None
    ip: Annotated[str, StringConstraints(max_length=255)] | None = None
    switch: Name | None = None
    port: StrictInt | None = Field(default=None, ge=0, le=4096)
    ssh_port: StrictInt | None = Field(default=None, ge=1, le=65535)
    model: Annotated[str, StringConstraints(max_length=64)] | None = None
    serial: Annotated[str, StringConstraints(max_length=64), Words(
        r"^[0-9A-Za-z]*$", "is not a board serial: letters and digits only, as in /proc/cpuinfo (1a2b3c4d)")
    ] | None = None
    mac: Mac | None = None
    host_key: Annotated[str, StringConstraints(max_length=4096)] | None = None
    properties: dict[PropKey, PropValue] | None = Field(default=None, max_length=32)

