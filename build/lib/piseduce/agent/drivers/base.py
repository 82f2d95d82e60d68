"""The driver interface: what a node type (raspberry, g5k, iot-lab) gives the agent.

A driver lists its nodes, builds the deploy form, reacts to bookings (a g5k driver submits the
OAR job there), and declares its processes as data: ordered `Step`s, each a small named async
function `run(ctx)` (an idempotent action) with an optional `done(ctx)` poll and timeouts. The
engine (`agent/engine/`) runs them, commits every transition and handles timeouts; the API
(`agent/api/`) calls the booking hooks. A driver never touches the reservation tables itself.
"""

from __future__ import annotations

import abc
import datetime as dt
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from piseduce.agent import lifecycle
from piseduce.protocol import CredentialKind, Feature
from piseduce.protocol import FormField as FormField  # the drivers' deploy forms are protocol models

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.config import AgentConfig


# ---------------------------------------------------------------- errors a driver raises


class DriverError(Exception):
    """A failure with a message meant for the user (it is shown as is)."""


class StepError(DriverError):
    """The current step failed for good: the action ends `failed` with this message."""


class BookingRefused(DriverError):
    """The remote side refused a booking (OAR refused the job...): the booking is rolled back."""


class ActionRefused(DriverError):
    """An action (extend, reboot...) is not possible now; the API answers 409 with this message."""


class InvalidParams(DriverError):
    """A deploy form value is wrong; the API answers 422 naming the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class CredentialsRequired(DriverError):
    """The user's testbed credentials are missing or refused by the testbed (HTTP 401/403/400)."""


# ---------------------------------------------------------------- data given to drivers


@dataclass
class NodeView:
    name: str
    ip: str = ""
    status: str = "available"
    properties: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReservationView:
    id: int
    node: NodeView
    owner: str
    bin: str
    start: dt.datetime
    end: dt.datetime
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    driver_state: dict[str, Any] = field(default_factory=dict)
    connection: dict[str, Any] = field(default_factory=dict)

    @property
    def node_name(self) -> str:
        return self.node.name


@dataclass
class NodeSpec:
    """A node as a remote inventory (g5k reference API, IoT-LAB nodes) describes it."""

    name: str
    ip: str = ""
    status: str = "available"
    properties: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BusyInterval:
    """A node held outside PiSeduce (another user's OAR job or IoT-LAB experiment)."""

    node: str
    start: dt.datetime
    end: dt.datetime
    reason: str = "busy outside PiSeduce"


class StepContext(abc.ABC):
    """What a step sees. The engine implements it; `state` and `connection` are persisted by the
    engine after each call of `run` or `done`, `progress` and `log` are committed at once."""

    reservation: ReservationView
    config: AgentConfig
    process: str
    args: dict[str, Any]
    # Decrypted testbed credentials {"user", "password"}, in memory only; None when not forwarded.
    credentials: dict[str, str] | None

    @property
    def node(self) -> NodeView:
        return self.reservation.node

    @property
    def params(self) -> dict[str, Any]:
        return self.reservation.params

    @property
    def state(self) -> dict[str, Any]:
        """The driver's bookkeeping for this reservation (job id, experiment id...)."""
        return self.reservation.driver_state

    @property
    def connection(self) -> dict[str, Any]:
        return self.reservation.connection

    @abc.abstractmethod
    async def progress(self, percent: int, message: str | None = None) -> None:
        """Report the progress of the current step (0-100), committed at once."""

    @abc.abstractmethod
    async def log(self, message: str, level: str = "info") -> None:
        """Add an event to the reservation's timeline, committed at once."""

    @abc.abstractmethod
    async def save_node_attrs(self, **attrs: Any) -> None:
        """Merge `attrs` into the node's driver attributes (a pinned host key...), committed at once."""


StepFn = Callable[[StepContext], Awaitable[None]]
STEP_NAME = re.compile(r"^(?=.{1,64}$)[a-z][a-z0-9]*(_[a-z0-9]+)*$")
PollFn = Callable[[StepContext], Awaitable[bool]]


@dataclass(frozen=True)
class Step:
    """One step of a process. `run` is idempotent: after a crash the engine calls it again.
    When `done` is given, the engine polls it (every `poll` seconds) after `run` until it is True.
    Timeouts are seconds since the step began, less the time the engine waited for its own
    database meanwhile (the commits of `progress`, `log` and saved state):
    past `reboot_after` the node gets one automatic hard reboot and the step starts over;
    past `fail_after` the action fails with a readable reason.

    Naming rule, for every driver: a step's `name` is snake_case, at most 64 characters (it is
    stored in the action row and resumed by it), and starts with the verb of what it does to the
    node or the testbed (`power_cycle`, `write_image`, `delete_job`, `submit`, `clean_up`); a step
    that only waits for something to happen is `wait_<what>` (`wait_nfs`, `wait_job`) and has a
    `done` poll. Its `label` is the same in words for people (`title` falls back to the name).

    Scaling rule: the DRIVER multiplies its timeouts (and `poll`, if it wishes) by
    `config.timeout_scale` when it builds its steps; the engine uses the values as given, never
    rescales them. After the automatic reboot the step's clock restarts, so a step that never
    answers fails after `reboot_after + fail_after`. When an executor resumes an interrupted step
    (after a crash or a restart) the step's clock restarts too, but a step rebooted once is never
    rebooted again."""

    name: str
    run: StepFn
    done: PollFn | None = None
    label: str = ""
    reboot_after: float | None = None
    fail_after: float | None = None
    poll: float = 1.0
    weight: int = 1  # share of the process' progress bar
    # When given, this reservation's fail_after (seconds, already scaled), computed as the step
    # begins: a step whose work follows a size (writing an image) gets a budget that follows it.
    budget: Callable[[StepContext], float] | None = None

    def __post_init__(self) -> None:
        if not STEP_NAME.fullmatch(self.name):
            raise ValueError(f"step name {self.name!r}: snake_case, at most 64 characters")
        if self.name.startswith("wait_") and self.done is None:
            raise ValueError(f"step {self.name!r} waits for something: it needs a done() poll")

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ")


@dataclass(frozen=True)
class Process:
    """A named, ordered list of steps. The statuses around it (the reservation's while it runs,
    once done, once failed) are the lifecycle's (`agent/lifecycle.py`), never the driver's."""

    name: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if self.name not in lifecycle.PROCESSES:
            raise ValueError(f"unknown process {self.name!r}: one of {', '.join(lifecycle.PROCESS_NAMES)}")

    @property
    def running_status(self) -> str:
        return lifecycle.statuses_of(self.name).running

    @property
    def done_status(self) -> str:
        return lifecycle.statuses_of(self.name).done


# ---------------------------------------------------------------- the interface


class RemoteInventory(Protocol):
    """A testbed's own node list and calendar (the g5k reference and status APIs, IoT-LAB's
    nodes and experiments)."""

    async def nodes(self, credentials: Mapping[str, str] | None) -> list[NodeSpec]:
        """The testbed's nodes. Implementations cache them for `inventory_refresh_seconds`, never
        forever."""
        ...

    async def busy(
        self, start: dt.datetime, end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> list[BusyInterval]:
        """Nodes held outside PiSeduce between start and end (other users' jobs)."""
        ...


# The processes beyond deploy and destroy, and the feature each gives.
PROCESS_FEATURES = {
    "reboot": Feature.REBOOT,
    "redeploy": Feature.REDEPLOY,
    "bootfiles": Feature.BOOTFILES,
    "register_env": Feature.SAVE_ENV,
}


class Driver(abc.ABC):
    node_type: ClassVar[str]
    # g5k and iot-lab act with the user's testbed account: every call forwards credentials.
    needs_credentials: ClassVar[bool] = False
    # Whose testbed account (GET /api/info `credentials`): the kind of login the web UI forwards.
    credential_kind: ClassVar[CredentialKind] = "none"
    # g5k and iot-lab list their nodes from the testbed; without one (raspberry) admins register them.
    inventory: RemoteInventory | None = None
    # What /api/info advertises besides what the driver's processes and inventory show (see
    # `features`): most testbeds let a booking grow, so EXTEND unless a driver says otherwise.
    declared_features: ClassVar[frozenset[Feature]] = frozenset({Feature.EXTEND})
    # Words for people in /api/info: `nodes` (what a node is), `testbed`.
    labels: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.sessions = sessions

    def features(self, processes: Mapping[str, Process]) -> frozenset[Feature]:
        """What the agent advertises: the declared features, one per optional process it has,
        and the node registry when nodes are not a testbed's inventory. Derived rather than
        declared where it can be, so a driver that gains a process advertises it."""
        out = set(self.declared_features)
        out.update(feature for process, feature in PROCESS_FEATURES.items() if process in processes)
        if self.inventory is None:
            out.add(Feature.NODE_REGISTRY)
        return frozenset(out)

    # -- inventory and availability

    async def sync_nodes(self, credentials: Mapping[str, str] | None = None) -> list[NodeSpec] | None:
        """The remote inventory, or None when nodes are registered locally (no `inventory`)."""
        return None if self.inventory is None else await self.inventory.nodes(credentials)

    async def remote_busy(
        self, start: dt.datetime, end: dt.datetime, credentials: Mapping[str, str] | None = None
    ) -> list[BusyInterval]:
        """Nodes held outside PiSeduce between start and end (other users' jobs)."""
        return [] if self.inventory is None else await self.inventory.busy(start, end, credentials)

    async def check_credentials(self, credentials: Mapping[str, str]) -> str:
        """Ask the testbed whether this login and password work (POST /api/credentials/check);
        returns what the testbed accepted, in words. Raise CredentialsRequired when the testbed
        refuses them, another DriverError when it cannot be asked now."""
        raise ActionRefused(f"{self.node_type} nodes are used without testbed credentials")

    # -- booking hooks, called by the API after the booking is written (before it is answered)

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        """React to new bookings (all of one request). Returns driver_state updates per reservation
        id. Raise BookingRefused to roll the whole booking back with the remote side's reason."""
        return {}

    async def on_extend(
        self, reservation: ReservationView, new_end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        """Extend on the remote side (g5k walltime). Raise ActionRefused when refused."""
        return {}

    async def on_cancel(  # noqa: B027 (an optional hook: most drivers have nothing to cancel)
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> None:
        """A reservation cancelled before anything was deployed (remote job deleted...)."""

    # -- the deploy form

    @abc.abstractmethod
    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        """The fields of the deploy form for this reservation."""

    @abc.abstractmethod
    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        """Check and normalise the submitted form; raise InvalidParams. The result is stored as the
        reservation's params (generated secrets such as an OS password included)."""

    # -- processes

    @abc.abstractmethod
    def processes(self) -> dict[str, Process]:
        """The processes this node type supports, by name (see lifecycle.PROCESS_NAMES)."""

    async def hard_reboot(self, ctx: StepContext) -> None:
        """Power-cycle the node (the engine's one automatic reboot on `reboot_after`)."""
        raise StepError(f"{self.node_type} nodes cannot be hard-rebooted")

    def connection_info(self, reservation: ReservationView) -> dict[str, Any]:
        """How the user reaches the node (shown on the manage page)."""
        return dict(reservation.connection)

    # -- extras

    def admin_router(self) -> APIRouter | None:
        """Extra `/api/admin/...` routes (switches, environments of a raspberry agent)."""
        return None

    def user_router(self) -> APIRouter | None:
        """Extra `/api/reservations/...` routes for users (the IoT-LAB data archive). Each route
        authenticates its caller and checks ownership itself (`piseduce.agent.auth.CallerDep`)."""
        return None

    # -- monitoring

    async def sample(self) -> list[tuple[str, str, float]]:
        """Measurements taken now, as (kind, subject, value): kind "power" (watts) or
        "temperature" (°C), subject a node name. Called by `piseduce agent monitor` every
        `monitor_period_seconds`; it must return within about one period, whatever the nodes do."""
        return []

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release clients and connections."""
