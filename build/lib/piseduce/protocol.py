"""The typed protocol between the web UI and the agents (DESIGN §5.1): the models of everything
an agent answers, which the agent's routes declare as `response_model` (so its OpenAPI documents
them) and the web UI's agent client reads every answer with (`piseduce.webui.agent_client`).
Requests stay with the agent that checks them (`piseduce.agent.schemas`); statuses are the
lifecycle's (`piseduce.agent.lifecycle`), re-exported here so that callers name them from one place.

An answer is read leniently and checked strictly: a field a newer agent added is ignored
(`extra="ignore"`), a field this side knows must have its type and stay within its bound, so a
hostile or broken agent cannot make the web UI hold or render what it did not mean to show.
The bounds are generous (an agent's own honest answers always fit; the protocol tests check it
against each driver) and exist to refuse the absurd, not to judge the plausible.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from piseduce import sshjump
from piseduce.agent.lifecycle import (
    ACTIVE_STATUSES,
    CANCELLED,
    CONFIGURING,
    DEPLOYED,
    DEPLOYING,
    DESTROYING,
    ENDED,
    FAILED,
    FINAL_STATUSES,
    SCHEDULED,
    STATUSES,
    USER_EVENTS,
)

# ---------------------------------------------------------------- statuses, bounded types, errors


# A reservation whose node is at work or held by a system (the admin's "who holds it now").
BUSY_STATUSES = (DEPLOYING, DEPLOYED, DESTROYING, FAILED)

NODE_AVAILABLE = "available"
NODE_STATUSES = (NODE_AVAILABLE, "maintenance", "broken")

# Whom a request is for (the X-Piseduce-User header): an e-mail address (the web UI's accounts) or a
# login name. The web UI refuses at sign-up an address this rule refuses, or the account could
# never book (the agent would answer 400 to its every request).
END_USER_RE = re.compile(r"^[\w.+\-]{1,64}(@[\w.\-]{1,255})?$")
MAX_LIST = 100_000  # items of any list an agent answers (a schedule of a big site included)


class Wire(BaseModel):
    """An answer's model: unknown fields ignored, known ones checked."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def one_of(allowed: tuple[str, ...], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"{value[:40]!r} is not a {what} ({', '.join(allowed)})")
        return value

    return AfterValidator(check)


# Bounded strings: a name or word, a sentence, a text (a log message, an error with its cause).
Label = Annotated[str, StringConstraints(max_length=320)]
ShortText = Annotated[str, StringConstraints(max_length=4096)]
Text = Annotated[str, StringConstraints(max_length=65536)]
ReservationStatus = Annotated[
    str, one_of(STATUSES, "reservation status"), Field(json_schema_extra={"enum": list(STATUSES)})
]
# Free-form JSON objects (connection info, deploy values, node properties, driver attributes).
JsonDict = Annotated[dict[Annotated[str, StringConstraints(max_length=128)], Any], Field(max_length=256)]
NodeStatus = Annotated[
    str, one_of(NODE_STATUSES, "node status"), Field(json_schema_extra={"enum": list(NODE_STATUSES)})
]


class ErrorOut(Wire):
    """Every error: a sentence, or (for malformed input) the list of what is wrong."""

    detail: str | list[dict[str, Any]]


class Health(Wire):
    status: Literal["ok"] = "ok"


# ---------------------------------------------------------------- GET /api/info


class Feature(StrEnum):
    """What an agent may do beyond booking, deploying and destroying."""

    EXTEND = "extend"  # a reservation's end can be moved later
    REBOOT = "reboot"
    REDEPLOY = "redeploy"
    BOOTFILES = "bootfiles"  # the deployed system's boot files can be updated
    SAVE_ENV = "save_env"  # a deployed node can be saved as a new environment
    FIRMWARE = "firmware"  # nodes run a firmware rather than an operating system
    MONITORING = "monitoring"  # power and temperature samples (GET /api/monitoring)
    POWER = "power"  # PoE switches, their ports and power (/api/admin/switches)
    ENVIRONMENTS = "environments"  # admins manage environment images (/api/admin/environments)
    NODE_REGISTRY = "node_registry"  # admins register nodes (otherwise a testbed's inventory)


# Whose testbed account the agent acts with: none, or the user's Grid'5000 or IoT-LAB login
# (forwarded, encrypted, in X-Piseduce-Credentials).
CredentialKind = Literal["none", "g5k", "iotlab"]
CREDENTIAL_KINDS: tuple[CredentialKind, ...] = ("none", "g5k", "iotlab")
TESTBED_NAMES: dict[CredentialKind, str] = {"none": "", "g5k": "Grid'5000", "iotlab": "FIT IoT-LAB"}

# What the agents of before this protocol did, by node type: read from an older agent's
# /api/info (which has no `features`) so that upgrading the web UI first takes nothing away.
# A frozen fact about old versions, not a place to add capabilities: drivers declare theirs.
LEGACY: dict[str, tuple[frozenset[Feature], CredentialKind]] = {
    "raspberry": (
        frozenset(
            {
                Feature.EXTEND, Feature.REBOOT, Feature.REDEPLOY, Feature.BOOTFILES, Feature.SAVE_ENV,
                Feature.MONITORING, Feature.POWER, Feature.ENVIRONMENTS, Feature.NODE_REGISTRY,
            }
        ),
        "none",
    ),
    "g5k": (frozenset({Feature.EXTEND, Feature.REDEPLOY}), "g5k"),
    "iot-lab": (frozenset({Feature.REBOOT, Feature.REDEPLOY, Feature.FIRMWARE}), "iotlab"),
}


def _known_features(value: Any) -> Any:
    """Features this web UI does not know yet (a newer agent's) are left out, not refused."""
    if isinstance(value, list | tuple | set | frozenset):
        known = {f.value for f in Feature}
        return [f for f in value if not isinstance(f, str) or f in known]
    return value


Features = Annotated[frozenset[Feature], BeforeValidator(_known_features), Field(max_length=64)]


# A host name or address, a user name and a host key a client may put in an ssh command or
# ~/.ssh/config unquoted (sshjump's patterns: the web UI and pisctl print them in a block).
SshHost = Annotated[str, StringConstraints(pattern=f"^{sshjump.HOST_RE.pattern}$")]
SshUser = Annotated[str, StringConstraints(pattern=f"^{sshjump.USER_RE.pattern}$")]
SshPublicKey = Annotated[str, StringConstraints(pattern=f"^{sshjump.KEY_RE.pattern}$")]


class GatewayInfo(Wire):
    """The agent's SSH gateway (`piseduce agent gateway`) as users reach it from outside the lab:
    `ssh -J user@host:port pi@<board address>`, the gateway's host key pinned."""

    host: SshHost = Field(description="The gateway's public host name or address")
    port: int = Field(ge=1, le=65535)
    user: SshUser = Field(description="The one user name every client logs in to the gateway as")
    host_key: SshPublicKey = Field(description="The gateway's SSH host key (a known_hosts line's key)")

    @property
    def jump(self) -> str:
        return f"{self.user}@{self.host}" + ("" if self.port == 22 else f":{self.port}")

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class AgentInfo(Wire):
    name: Label
    node_type: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(
        description="The kind of nodes: raspberry, g5k, iot-lab"
    )
    site: Label
    version: Annotated[str, StringConstraints(max_length=64)]
    features: Features = Field(default_factory=frozenset, description="What the agent supports")
    credentials: CredentialKind = Field(
        default="none", description="Whose testbed account it acts with (X-Piseduce-Credentials)"
    )
    labels: dict[Annotated[str, StringConstraints(max_length=32)], Label] = Field(
        default_factory=dict,
        max_length=16,
        description="Words for people: `nodes` (what a node is), `testbed` (the testbed it drives)",
    )
    # Kept for web UIs of before `credentials`: true when credentials is not "none".
    needs_credentials: bool = False
    gateway: GatewayInfo | None = Field(
        default=None, description="The SSH gateway to the boards, when the agent runs one"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_agent(cls, data: Any) -> Any:
        if isinstance(data, dict) and "features" not in data and isinstance(data.get("node_type"), str):
            features, kind = LEGACY.get(data["node_type"], (frozenset(), "none"))
            data = {"features": sorted(features), "credentials": kind, **data}
        return data

    @field_validator("gateway", mode="wrap")
    @classmethod
    def _usable_gateway(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A gateway the web UI cannot print safely (a newline in its host...) is left out: users
        are then shown no way in through it, and the agent stays usable."""
        try:
            return handler(value)
        except ValidationError:
            return None

    def supports(self, feature: Feature) -> bool:
        return feature in self.features

    @property
    def testbed(self) -> str:
        """The testbed whose account it uses, in words ('' when none)."""
        return self.labels.get("testbed") or TESTBED_NAMES[self.credentials]


# ---------------------------------------------------------------- nodes, calendar, monitoring


NodeName = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class Node(Wire):
    name: NodeName
    properties: JsonDict = Field(default_factory=dict)
    status: NodeStatus


class BusySlot(Wire):
    start: AwareDatetime
    end: AwareDatetime
    # Only for admins and for the owner's own bookings; None otherwise.
    owner: Label | None = None
    mine: bool = False
    reservation_id: int | None = None
    status: Label = ""
    reason: ShortText = ""  # "busy outside PiSeduce" for remote jobs


class Schedule(Wire):
    """Only the nodes with a slot in the window are listed (no key: free all along). A slot the
    caller may not see comes as its start and end only; the defaults above fill the rest."""

    # The window asked (the agent echoes it; the pages use the window they asked for).
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    nodes: dict[NodeName, Annotated[list[BusySlot], Field(max_length=MAX_LIST)]] = Field(max_length=MAX_LIST)


class AdminNode(Wire):
    """A node as admins see it: what users see plus the driver's attributes (secrets removed)."""

    name: NodeName
    ip: Label
    status: NodeStatus
    present: bool
    properties: JsonDict
    attrs: JsonDict


class Deleted(Wire):
    """`DELETE /api/admin/<collection>/<name>`: `result` says what became of it."""

    name: NodeName
    result: Label = "deleted"


PROGRESS_DOC = (
    "Progress of the whole running process in percent (0-100): the finished steps plus the running "
    "step's done share, each step counting by its weight. It is not the running step's own percentage; "
    "show it as it comes. 0 when no process runs."
)


class ActionOut(Wire):
    id: int
    reservation_id: int | None
    node: Label = ""
    owner: Label = ""
    process: Label
    status: Label
    step: Label
    progress: int = Field(ge=0, le=100, description=PROGRESS_DOC)
    error: Text
    locked_by: Label | None = None
    created_at: dt.datetime


MonitoringKind = Literal["power", "temperature"]


class SeriesOut(Wire):
    subject: NodeName = Field(description="The node's name")
    t: list[str] = Field(max_length=MAX_LIST, description="Times (ISO-8601 UTC), oldest first")
    v: list[float] = Field(max_length=MAX_LIST, description="Values (mean over each bucket), one per time")

    @model_validator(mode="after")
    def _one_value_per_time(self) -> SeriesOut:
        if len(self.t) != len(self.v):
            raise ValueError(f"{len(self.t)} times but {len(self.v)} values")
        return self


class MonitoringOut(Wire):
    kind: MonitoringKind
    unit: Label
    since: Label
    until: Label
    step_seconds: float = Field(description="Bucket width: samples closer than this are averaged")
    series: list[SeriesOut] = Field(max_length=MAX_LIST)


# ---------------------------------------------------------------- reservations


# The actions a reservation may offer (`actions`): the lifecycle's user events.
ACTIONS = tuple(event.value for event in USER_EVENTS)
Action = Annotated[
    str, one_of(ACTIONS, "reservation action"), Field(json_schema_extra={"enum": list(ACTIONS)})
]


class EventOut(Wire):
    time: dt.datetime
    level: Annotated[str, StringConstraints(max_length=16)]
    step: Label
    message: Text


class EnergyOut(Wire):
    """What a reservation's node drew (PoE power samples, trapezoid rule): `final` once written at
    its end, else measured up to now."""

    wh: float = Field(ge=0)
    mean_w: float = Field(ge=0)
    peak_w: float = Field(ge=0)
    samples: int = Field(ge=0)
    seconds: float = Field(ge=0)
    final: bool = False


class ReservationOut(Wire):
    id: int = Field(ge=1)
    node: NodeName
    owner: Label
    bin: Label
    start: AwareDatetime
    end: AwareDatetime
    status: ReservationStatus
    process: Label = Field(default="", description="The running process (deploy, destroy...); '' when none")
    step: Label = Field(default="", description="The running step's name")
    step_label: ShortText = Field(default="", description="The running step's title, for people")
    step_index: int = Field(default=0, ge=0, description="The running step's position, from 0")
    step_count: int = Field(default=0, ge=0, description="How many steps the running process has")
    progress: int = Field(default=0, ge=0, le=100, description=PROGRESS_DOC)
    error: Text = ""
    events: list[EventOut] = Field(default_factory=list, max_length=10_000)
    connection: JsonDict = Field(default_factory=dict)
    params: JsonDict = Field(default_factory=dict)  # os_password only for its owner
    node_properties: JsonDict = Field(default_factory=dict)
    actions: list[Action] = Field(default_factory=list, max_length=16)  # what can be asked now
    energy: EnergyOut | None = None  # Raspberry Pi (PoE samples); None when nothing was sampled

    @property
    def ssh(self) -> str:
        """The command that logs in ('' when there is none yet)."""
        value = self.connection.get("ssh", "")
        return value if isinstance(value, str) else ""


class BookingOut(Wire):
    reservations: list[ReservationOut] = Field(max_length=MAX_LIST)


class NextSlotOut(Wire):
    """The earliest start a request could be booked at, with the nodes it would take (None: none)."""

    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    nodes: list[Label] = Field(default_factory=list, max_length=MAX_LIST)
    detail: ShortText = ""


class AcceptedOut(Wire):
    """An action accepted (202): the reservation's status now, and what was queued."""

    id: int
    status: ReservationStatus
    process: Label = ""
    message: ShortText = ""


FieldKind = Literal["select", "text", "password", "textarea", "ssh_keys", "number", "checkbox", "file"]


class FormField(Wire):
    """One field of the deploy form (GET /api/reservations/{id}/form)."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    label: ShortText
    kind: FieldKind = "text"
    choices: list[ShortText] = Field(default_factory=list, max_length=10_000)
    required: bool = False
    help: Text = ""
    default: Any = None


class CredentialsCheckOut(Wire):
    """What the testbed said of the credentials forwarded in X-Piseduce-Credentials."""

    valid: bool = Field(description="True when the testbed accepted the login and password")
    testbed: Label = Field(description="The testbed asked (Grid'5000, FIT IoT-LAB)")
    user: Label = Field(description="The login that was checked")
    message: Text = Field(description="The testbed's answer in words")


# ---------------------------------------------------------------- a raspberry agent's admin collections


class EnvironmentOut(Wire):
    name: NodeName
    image: ShortText
    size: int
    sector_start: int
    ssh_user: Label
    web: bool
    checksum: Label
    description: Text
    state: Label
    owner: Label
    default: bool = Field(False, description="An administrator made it the default environment")
    preselected: bool = Field(
        False, description="The environment deploy forms preselect now: the default, else the newest "
                           "public one")


class ScanOut(Wire):
    added: list[NodeName] = Field(max_length=MAX_LIST)
    updated: list[NodeName] = Field(max_length=MAX_LIST)
    skipped: dict[ShortText, ShortText] = Field(max_length=MAX_LIST)

__all__ = [
    "ACTIONS",
    "ACTIVE_STATUSES",
    "BUSY_STATUSES",
    "CANCELLED",
    "CONFIGURING",
    "CREDENTIAL_KINDS",
    "DEPLOYED",
    "DEPLOYING",
    "DESTROYING",
    "ENDED",
    "FAILED",
    "FINAL_STATUSES",
    "NODE_AVAILABLE",
    "NODE_STATUSES",
    "PROGRESS_DOC",
    "SCHEDULED",
    "STATUSES",
    "TESTBED_NAMES",
    "AcceptedOut",
    "Action",
    "ActionOut",
    "AdminNode",
    "AgentInfo",
    "BookingOut",
    "BusySlot",
    "CredentialKind",
    "CredentialsCheckOut",
    "Deleted",
    "EnvironmentOut",
    "ErrorOut",
    "EventOut",
    "Feature",
    "FormField",
    "Health",
    "MonitoringOut",
    "Node",
    "ReservationOut",
    "ScanOut",
    "Schedule",
    "SeriesOut",
    "Wire",
]
