"""The driver interface: what a node type (raspberry, g5k, iot-lab) gives the agent.

A driver lists its nodes, builds the deploy form, reacts to bookings (a g5k driver submits the
OAR job there), and declares its processes as data: ordered `Step`s, each a small named async
function `run(ctx)` (an idempotent action) with an optional `done(ctx)` poll and timeouts. The
engine (`agent/engine.py`) runs them, commits every transition and handles timeouts; the API
(`agent/api/`) calls the booking hooks. A driver never touches the reservation tables itself.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

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


class FormField(BaseModel):
    """One field of the deploy form (GET /api/reservations/{id}/form)."""

    name: str
    label: str
    kind: Literal["select", "text", "password", "textarea", "ssh_keys", "number", "checkbox", "file"] = "text"
    choices: list[str] = Field(default_factory=list)
    required: bool = False
    help: str = ""
    default: Any = None


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
PollFn = Callable[[StepContext], Awaitable[bool]]


@dataclass(frozen=True)
class Step:
    """One step of a process. `run` is idempotent: after a crash the engine calls it again.
    When `done` is given, the engine polls it (every `poll` seconds) after `run` until it is True.
    Timeouts are seconds since the step began:
    past `reboot_after` the node gets one automatic hard reboot and the step starts over;
    past `fail_after` the action fails with a readable reason.

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

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ")


@dataclass(frozen=True)
class Process:
    """A named, ordered list of steps. The reservation has `running_status` while it runs and
    `done_status` once every step is done (`failed` on failure)."""

    name: str
    steps: tuple[Step, ...]
    running_status: str
    done_status: str

    def index(self, step_name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == step_name:
                return i
        raise KeyError(step_name)


PROCESS_NAMES = ("deploy", "destroy", "reboot", "redeploy", "bootfiles", "register_env")


# ---------------------------------------------------------------- the interface


class Driver(abc.ABC):
    node_type: ClassVar[str]
    # g5k and iot-lab act with the user's testbed account: every call forwards credentials.
    needs_credentials: ClassVar[bool] = False
    # g5k and iot-lab list their nodes from the remote API; raspberry nodes are registered by admins.
    remote_inventory: ClassVar[bool] = False

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.sessions = sessions

    # -- inventory and availability

    async def sync_nodes(self, credentials: Mapping[str, str] | None = None) -> list[NodeSpec] | None:
        """The remote inventory, or None when nodes are registered locally (raspberry).
        Implementations cache it for `inventory_refresh_seconds`, never forever."""
        return None

    async def remote_busy(
        self, start: dt.datetime, end: dt.datetime, credentials: Mapping[str, str] | None = None
    ) -> list[BusyInterval]:
        """Nodes held outside PiSeduce between start and end (other users' jobs)."""
        return []

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
        """The processes this node type supports, by name (see PROCESS_NAMES)."""

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
