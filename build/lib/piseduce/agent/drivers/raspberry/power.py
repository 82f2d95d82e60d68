"""PoE power of a board's switch port: set, cycle, status, draw. The one way the agent reaches a
port's power: the deploy/destroy steps, the administrators' port routes and the monitoring
sampler all go through `PoePower` (as MAAS's power drivers share one base).

Errors are split the way a caller must act on them: `PowerRefused` is final (the switch answered
no: a read-only community, the uplink port, a wrong OID; asking again changes nothing);
`PowerUnreachable` may pass (UDP lost, a busy switch answering late). The component owns the
retries of the second kind, per its `RetryPolicy`, pausing on the injected clock; a SET repeated
is harmless (the same value again).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from piseduce.agent.clock import SYSTEM, Clock
from piseduce.agent.drivers.raspberry.snmp import (
    MasterPortRefused,
    PortState,
    SnmpClient,
    SnmpError,
    SnmpRefused,
    SwitchInfo,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class PowerError(Exception):
    """A port's power could not be read or switched; the message is readable."""


class PowerRefused(PowerError):
    """The switch (or the agent, for the uplink port) refused: final."""


class PowerUnreachable(PowerError):
    """The switch did not answer, after the retries."""


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries of a request that gets no answer, pausing `pause * n` after the n-th."""

    attempts: int = 1
    pause: float = 0.0


# Nobody waits on a single try: an administrator sees the switch's answer at once, the sampler's
# next round is its retry.
ONCE = RetryPolicy()


class PoePower:
    def __init__(self, snmp: SnmpClient, policy: RetryPolicy = ONCE, clock: Clock = SYSTEM) -> None:
        self.snmp = snmp
        self.policy = policy
        self.clock = clock

    async def _try(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call` under the retry policy; errors say `what` failed ("" : the switch's words only)."""
        attempts = max(1, self.policy.attempts)
        for i in range(attempts):
            try:
                return await call()
            except (MasterPortRefused, SnmpRefused) as exc:
                raise PowerRefused(f"{what}: {exc}" if what else str(exc)) from None
            except SnmpError as exc:
                if i == attempts - 1:
                    raise PowerUnreachable(f"{what}: {exc}" if what else str(exc)) from None
                log.info("%s: %s; trying again", what or "SNMP", exc)
                await self.clock.sleep(self.policy.pause * (i + 1))
        raise PowerUnreachable(f"{what}: failed")  # unreachable: the loop returns or raises

    async def set(self, sw: SwitchInfo, port: int, on: bool, subject: str = "") -> None:
        """Power the port on or off; `subject` (a board's name) names it in errors. The SET's
        response says it was applied (SNMP sets are atomic): no read-back needed."""
        what = f"power {'on' if on else 'off'} {subject}" if subject else ""
        await self._try(what, lambda: self.snmp.set_power(sw, port, on))

    async def cycle(self, sw: SwitchInfo, port: int, pause: float, subject: str = "") -> None:
        """Off, `pause` seconds (the board's capacitors drain), on."""
        await self.set(sw, port, False, subject)
        await self.clock.sleep(pause)
        await self.set(sw, port, True, subject)

    async def status(self, sw: SwitchInfo, port: int) -> PortState:
        return await self._try("", lambda: self.snmp.port_status(sw, port))

    async def statuses(self, sw: SwitchInfo) -> dict[int, PortState]:
        """Every port's PoE state, by one walk."""
        return await self._try("", lambda: self.snmp.ports_status(sw))

    async def draw(self, sw: SwitchInfo, port: int) -> float | None:
        """Watts drawn on the port (None: the switch has no power OID configured)."""
        return await self._try("", lambda: self.snmp.port_power(sw, port))
