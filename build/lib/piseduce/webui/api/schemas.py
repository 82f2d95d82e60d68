"""The users' API's models (`/api/v1`): what it accepts, strictly (unknown keys refused, numbers
read by piseduce.numbers). What it answers is defined once, in piseduce.api_models (the client reads
with the same classes), and webui/api/views.py builds those answers.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from piseduce.numbers import StrictInt, UnsignedFloat

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
BinName = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9 ._-]*$")]
FilterText = Annotated[str, StringConstraints(min_length=1, max_length=320)]
# The shortest booking: the CLI's --hours minimum (client/cli/booking.py), 36 s; below it a slot is
# no use (0.0001 h was booked as 0.36 s). The longest: a year and a day.
MIN_HOURS = 0.01
MAX_HOURS = 24 * 366


def _finite(value: Any) -> Any:
    # JSON as Python reads it carries NaN and Infinity: said as what is wanted, not "> 0".
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a number of hours is expected, e.g. 3")
    return value


def _hours_range(value: float) -> float:
    if not MIN_HOURS <= value <= MAX_HOURS:
        raise ValueError(f"a number of hours from {MIN_HOURS} (36 s) to {MAX_HOURS} is expected, e.g. 3")
    return value


Hours = Annotated[UnsignedFloat, BeforeValidator(_finite), AfterValidator(_hours_range)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")



class NodeRef(Strict):
    agent: Name
    node: Name


class BookingIn(Strict):
    """Named nodes (`nodes`), or a number of nodes (`count`) matching `filters` (the Reserve page's
    syntax: `memory>=4G`, `model=RPI4B`, `type!=g5k`): all or nothing, across agents."""

    nodes: list[NodeRef] | None = Field(default=None, min_length=1, max_length=1000)
    count: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    filters: list[FilterText] = Field(default_factory=list, max_length=32)
    start: str = Field(default="now", max_length=64, description="ISO-8601 with a time zone, or 'now'")
    hours: Hours
    bin: BinName = ""


class NextSlotIn(Strict):
    """When could this be booked all at once? Named nodes (`nodes`) or `count` nodes matching
    `filters`, for `hours`, starting at or after `after` ('now' or ISO-8601 with a time zone)."""

    nodes: list[NodeRef] | None = Field(default=None, min_length=1, max_length=1000)
    count: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    filters: list[FilterText] = Field(default_factory=list, max_length=32)
    after: str = Field(default="now", max_length=64, description="ISO-8601 with a time zone, or 'now'")
    hours: Hours


class DeployIn(Strict):
    values: dict[Annotated[str, StringConstraints(max_length=64)], Any] = Field(
        default_factory=dict,
        max_length=64,
        description="The deploy form's values, by field name (GET …/form lists them)",
    )


class ExtendIn(Strict):
    hours: Annotated[UnsignedFloat, Field(ge=0, le=24 * 366)] = Field(
        default=0, description="Hours to add; 0 extends by the reservation's own length"
    )


class SaveEnvironmentIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class SshKeysIn(Strict):
    keys: Annotated[str, StringConstraints(min_length=1, max_length=64 * 1024)] = Field(
        description="One or more OpenSSH public key lines"
    )


class CredentialsIn(Strict):
    login: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$")]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
