"""Power and temperature of the boards, for `piseduce agent monitor` (the driver's `sample` hook).

Power: one SNMP GET of the switch's vendor power OID (`<power_oid>.<power_oid_offset + port>`) per
port that holds a node; switches without a power OID are skipped (RFC 3621 has no per-port reading).

Temperature: `cat /sys/class/thermal/thermal_zone0/temp` over SSH as root with the agent's key, on
powered boards only, whichever system runs: the netboot system (the agent's key is in its root's
authorized_keys) or a system this agent deployed (the configure step adds the agent's key to
root's authorized_keys, as it does for the reboot checks). The connection accepts only the host keys
pinned for that board's systems, so a board whose deployed system was replaced, or whose user took
the agent's key out, is simply not measured. `cat` rather than `piseduce-node temperature`: it is the
same file, it works on both systems, and it does not start a Python interpreter on a small board
every period. Every board is read concurrently with short timeouts: a dead board costs one timeout,
in parallel with the others, never a stall.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh
from sqlalchemy import select

from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.power import PoePower, PowerError
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.agent.drivers.raspberry.switch_secrets import SecretsUnavailable, SwitchKeyring
from piseduce.agent.models import Node, Switch

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

THERMAL = "/sys/class/thermal/thermal_zone0/temp"
# A board's SoC reads between these (°C); anything else is a broken sensor or a system that lies.
TEMP_MIN, TEMP_MAX = -40.0, 150.0
# Concurrent SSH logins: enough for a rack of boards in one period, few enough for the agent's host.
MAX_SSH = 32
Sample = tuple[str, str, float]


@dataclass(frozen=True)
class BoardRef:
    name: str
    ip: str
    ssh_port: int
    switch: str
    port: int
    pins: tuple[str, ...]  # pinned host keys of its netboot and deployed systems


def parse_millicelsius(text: str) -> float | None:
    """The thermal zone's reading (millidegrees) in °C, or None when it is not a plausible one."""
    first = text.strip().split("\n", 1)[0].strip()
    try:
        value = int(first) / 1000.0
    except ValueError:
        return None
    if not TEMP_MIN <= value <= TEMP_MAX:
        return None
    return round(value, 3)


def _switches(s: Session, keyring: SwitchKeyring) -> dict[str, SwitchInfo]:
    out = {}
    for row in s.scalars(select(Switch)):
        try:
            out[row.name] = keyring.info(row)
        except SecretsUnavailable as exc:
            log.warning("switch %s not sampled: %s", row.name, exc)
    return out


def _boards(
    sessions: sessionmaker[Session], keyring: SwitchKeyring
) -> tuple[list[BoardRef], dict[str, SwitchInfo]]:
    with sessions() as s:
        switches = _switches(s, keyring)
        boards = []
        for n in s.scalars(select(Node).where(Node.present.is_(True)).order_by(Node.name)):
            attrs: dict[str, Any] = {**(n.properties or {}), **(n.attrs or {})}
            try:
                port = int(attrs.get("port"))  # type: ignore[arg-type]
                ssh_port = int(attrs.get("ssh_port") or 22)
            except (TypeError, ValueError):
                continue
            switch = str(attrs.get("switch") or "")
            if switch not in switches:
                continue
            pins = tuple(
                str(k)
                for k in (attrs.get("nfs_host_key") or attrs.get("host_key"), attrs.get("deployed_host_key"))
                if k
            )
            boards.append(BoardRef(n.name, n.ip or str(attrs.get("ip") or ""), ssh_port, switch, port, pins))
    return boards, switches


class RpiSampler:
    def __init__(
        self, config: AgentConfig, sessions: sessionmaker[Session], power: PoePower,
        keyring: SwitchKeyring | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.power = power
        self.keyring = keyring or SwitchKeyring(config.key_path)
        self._gate = asyncio.Semaphore(MAX_SSH)
        self._key: asyncssh.SSHKey | None = None
        # (node, what) whose last reading failed: a lasting failure is logged once, not every period.
        self._failing: set[tuple[str, str]] = set()

    @property
    def timeout(self) -> float:
        # A third of the period for the login and as much for the command: a sample ends in time.
        return max(1.0, min(5.0, self.config.monitor_period_seconds / 3))

    def agent_key(self) -> asyncssh.SSHKey | None:
        """The agent's key, read only: the executor creates it (two processes must not race)."""
        if self._key is None:
            path = self.config.resolve(self.config.ssh_key_file)
            if not path.is_file():
                return None
            try:
                self._key = asyncssh.read_private_key(str(path))
            except (OSError, asyncssh.KeyImportError, ValueError) as exc:
                log.warning("monitoring: cannot read the agent key %s: %s", path, exc)
                return None
        return self._key

    def _failed(self, node: str, what: str, reason: object) -> None:
        if (node, what) not in self._failing:
            self._failing.add((node, what))
            log.info("monitoring: %s of %s not read: %s", what, node, reason)

    def _ok(self, node: str, what: str) -> None:
        if (node, what) in self._failing:
            self._failing.discard((node, what))
            log.info("monitoring: %s of %s read again", what, node)

    # -- power

    async def _power(self, sw: SwitchInfo, b: BoardRef) -> float | None:
        try:
            watts = await self.power.draw(sw, b.port)
        except PowerError as exc:
            self._failed(b.name, "power", exc)
            return None
        if watts is None or watts < 0:
            self._failed(b.name, "power", "not a power reading")
            return None
        self._ok(b.name, "power")
        return watts

    async def _port_states(self, sw: SwitchInfo) -> dict[int, str]:
        try:
            return dict(await self.power.statuses(sw))
        except PowerError as exc:
            log.debug("monitoring: PoE states of %s not read: %s", sw.name, exc)
            return {}

    # -- temperature

    async def _temperature(self, b: BoardRef, key: asyncssh.SSHKey) -> float | None:
        try:
            known: Any = ([asyncssh.import_public_key(p) for p in b.pins], [], [])
        except (asyncssh.KeyImportError, ValueError) as exc:
            self._failed(b.name, "temperature", f"unreadable pinned host key ({exc})")
            return None
        async with self._gate:
            try:
                conn = await asyncio.wait_for(
                    asyncssh.connect(
                        b.ip,
                        b.ssh_port,
                        username="root",
                        client_keys=[key],
                        known_hosts=known,
                        config=None,
                        agent_path=None,
                        password=None,
                        kbdint_auth=False,
                        gss_auth=False,
                        preferred_auth="publickey",
                        connect_timeout=self.timeout,
                        login_timeout=self.timeout,
                    ),
                    self.timeout,
                )
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                # A host key not pinned ends here too (HostKeyNotVerifiable): nothing is sent to it.
                self._failed(b.name, "temperature", str(exc) or type(exc).__name__)
                return None
            try:
                async with conn:
                    res = await sshc.run(conn, ["cat", THERMAL], timeout=self.timeout)
            except sshc.SSHUnavailable as exc:
                self._failed(b.name, "temperature", exc)
                return None
        value = parse_millicelsius(res.stdout) if res.exit_status == 0 else None
        if value is None:
            self._failed(b.name, "temperature", f"unreadable {THERMAL}: {res.stdout[:40]!r}")
        else:
            self._ok(b.name, "temperature")
        return value

    # -- one round

    async def sample(self) -> list[Sample]:
        boards, switches = await asyncio.to_thread(_boards, self.sessions, self.keyring)
        metered = [b for b in boards if switches[b.switch].power_oid]
        unmetered = {b.switch for b in boards if not switches[b.switch].power_oid}
        powers, states = await asyncio.gather(
            asyncio.gather(*(self._power(switches[b.switch], b) for b in metered)),
            asyncio.gather(*(self._port_states(switches[name]) for name in sorted(unmetered))),
        )
        out: list[Sample] = []
        watts: dict[str, float] = {}
        for b, w in zip(metered, powers, strict=True):
            if w is not None:
                watts[b.name] = w
                out.append(("power", b.name, w))
        port_state = {name: st for name, st in zip(sorted(unmetered), states, strict=True)}

        def powered(b: BoardRef) -> bool:
            # Unknown (the switch did not answer) counts as powered: the SSH timeout bounds the try.
            if b.name in watts:
                return watts[b.name] > 0
            return port_state.get(b.switch, {}).get(b.port, "unknown") != "off"

        key = self.agent_key()
        readable = [b for b in boards if key is not None and b.pins and b.ip and powered(b)]
        if key is not None and readable:
            temps = await asyncio.gather(*(self._temperature(b, key) for b in readable))
            for b, t in zip(readable, temps, strict=True):
                if t is not None:
                    out.append(("temperature", b.name, t))
        return out


_samplers: weakref.WeakKeyDictionary[RaspberryDriver, RpiSampler] = weakref.WeakKeyDictionary()


async def sample_boards(driver: RaspberryDriver) -> list[Sample]:
    """`RaspberryDriver.sample`: one sampler per driver, so the agent key is read once and a
    lasting failure is logged once."""
    sampler = _samplers.get(driver)
    if sampler is None:
        sampler = _samplers[driver] = RpiSampler(driver.config, driver.sessions, driver.power, driver.keyring)
    return await sampler.sample()
