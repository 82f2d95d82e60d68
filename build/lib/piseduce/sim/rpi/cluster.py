"""A simulated Raspberry Pi cluster: one PoE switch (SNMP, on loopback) and N boards (SSH).

In the real mode (root) the boards are Linux hosts on a private board network behind the switch
(see `fabric` and `realsys`); elsewhere they are SSH servers inside this process (`inproc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from piseduce.private_files import make_private_dir
from piseduce.sim.rpi import firmware, mode
from piseduce.sim.rpi.board import MODELS, Board, Identity
from piseduce.sim.rpi.bounded import StopTimeout, stop_task
from piseduce.sim.rpi.card import spread
from piseduce.sim.rpi.fabric import Fabric, FabricError
from piseduce.sim.rpi.inproc import InProcessRuntime
from piseduce.sim.rpi.realsys import RealRuntime
from piseduce.sim.rpi.switch import POE_ADMIN_OID, VENDORS, SnmpSwitch, SwitchOptions, V3User, oid_str

log = logging.getLogger(__name__)

DEFAULT_MODELS = ["RPI4B4G", "RPI3B+", "RPI4B8G", "RPI4B2G"]
MASTER_POWER_MW = 6400  # the pimaster (a Pi 4 with a disk) on the uplink port
DHCP_POLL_S = 0.2  # how often the dnsmasq file is checked for changes
ACTIVITY_PERIOD_S = 0.5  # how often real-mode boards' CPU use and sensors are refreshed


@dataclass
class ClusterOptions:
    boards: int = 4
    state_dir: Path = field(default_factory=lambda: Path("sim-rpi"))
    tftp_root: Path = field(default_factory=lambda: Path("sim-rpi/tftpboot"))
    nfs_root: Path = field(default_factory=lambda: Path("sim-rpi/nfs"))
    snmp_port: int = 0
    community: str = "private"
    time_scale: float = 1.0
    boot_delay: float = 20.0
    boot_failure_rate: float = 0.0
    snmp_loss: float = 0.0
    ssh_drop_rate: float = 0.0
    seed: int | None = None
    models: list[str] | None = None
    host: str = "127.0.0.1"
    switch_name: str = "sw1"
    switch_vendor: str = "cisco"  # where the switch answers per-port power (switch.VENDORS)
    # SD card speeds in MB/s (None = as fast as the host's disk, for unit tests): write speeds
    # spread evenly over (low, high) across the boards; one read speed for all.
    card_write_mbps: tuple[float, float] | None = None
    card_read_mbps: float | None = None
    # The switch's SNMPv3 user (authPriv, SHA and AES); its pass phrases are made once and kept in
    # state_dir/snmp_v3.json (0600), like the secrets of a real switch's configuration.
    v3_user: str = "piseduce"
    mode: str = "auto"  # auto (real when possible) | real | in-process
    network: str | None = None  # the board network (real mode), e.g. 10.42.0.0/24; None: a free one
    link_mbit: float | None = None  # each board's link rate (real mode; None: unshaped)
    uplink_mbit: float | None = None  # the switch's uplink to the agent host (real mode)
    link_loss: float = 0.0  # percent of packets every board's link drops, both ways (real mode)
    # The dnsmasq file `piseduce agent network-config` writes (real mode): when set, the boards get
    # their addresses by DHCP from a dnsmasq the simulator runs with it, restarted whenever the
    # file changes; until it exists no board gets an address (none boots).
    dhcp_config: Path | None = None

    def __post_init__(self) -> None:
        self.state_dir, self.tftp_root, self.nfs_root = (
            Path(self.state_dir), Path(self.tftp_root), Path(self.nfs_root))
        if self.dhcp_config is not None:
            self.dhcp_config = Path(self.dhcp_config)
        if self.boards < 1:
            raise ValueError("boards must be at least 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        for name in ("boot_failure_rate", "snmp_loss", "ssh_drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.switch_vendor not in VENDORS:
            raise ValueError(f"unknown switch vendor {self.switch_vendor!r} (one of {', '.join(VENDORS)})")
        if self.card_write_mbps is not None:
            low, high = self.card_write_mbps
            if not 0 < low <= high:
                raise ValueError("card_write_mbps is (low, high) with 0 < low <= high")
        if self.card_read_mbps is not None and not self.card_read_mbps > 0:
            raise ValueError("card_read_mbps must be positive")
        if self.mode not in mode.MODES:
            raise ValueError(f"unknown mode {self.mode!r} (one of {', '.join(mode.MODES)})")
        if not 0.0 <= self.link_loss <= 100.0:
            raise ValueError("link_loss is a percentage between 0 and 100")
        for name in ("link_mbit", "uplink_mbit"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None: unshaped)")
        for model in self.models or []:
            if model not in MODELS:
                raise ValueError(f"unknown model {model!r} (one of {', '.join(MODELS)})")


def _load_or_create_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(key.export_private_key())
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return key


def _write_public_key(path: Path, key: asyncssh.SSHKey) -> None:
    pub = Path(str(path) + ".pub")
    line = key.export_public_key().decode()
    if not pub.exists() or pub.read_text() != line:
        pub.write_text(line)


class RpiCluster:
    def __init__(self, opts: ClusterOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.boards: list[Board] = []
        self._by_name: dict[str, Board] = {}
        self.master_enabled = True
        self.unplugged: set[int] = set()  # ports whose cable is out (link down even when powered)
        self.v3: V3User | None = None
        self.switch = SnmpSwitch(
            self,
            SwitchOptions(
                opts.switch_name, opts.host, opts.snmp_port, opts.community, opts.snmp_loss,
                vendor=opts.switch_vendor,
            ),
            self.rng,
        )
        self.started = False
        self.mode = ""
        self.mode_reason = ""
        self.fabric: Fabric | None = None
        self._activity: asyncio.Task[None] | None = None
        self._dhcp_watch: asyncio.Task[None] | None = None
        self.dhcp_served = 0  # how many times dnsmasq was (re)started with the dhcp_config file

    # -- PortBackend for the switch ----------------------------------------------------------
    @property
    def port_count(self) -> int:
        return len(self.boards) + 1

    def port_enabled(self, port: int) -> bool:
        if port == self.port_count:
            return self.master_enabled
        board = self.boards[port - 1]
        return board.powered or board.glitching

    def set_port_enabled(self, port: int, enabled: bool) -> None:
        if port == self.port_count:
            self.master_enabled = enabled
            return
        board = self.boards[port - 1]
        if enabled and port in self.unplugged:
            log.info("PoE port %d enabled with nothing plugged in: no power drawn", port)
            return
        if enabled:
            board.power_on()
        else:
            board.power_off()
        log.info("PoE port %d (%s) %s", port, board.name, "on" if enabled else "off")

    def port_power_mw(self, port: int) -> int:
        if port == self.port_count:
            return MASTER_POWER_MW if self.master_enabled else 0
        return self.boards[port - 1].power_mw()

    def port_link(self, port: int) -> bool:
        """Ethernet link: the device on the port is powered and its cable is plugged in."""
        return self.port_enabled(port) and port not in self.unplugged

    def set_cable(self, port: int, plugged: bool) -> None:
        """Fault knob: pull (or put back) the cable of a port; its PoE and the board go down too."""
        if not 1 <= port <= self.port_count:
            raise ValueError(f"the switch has ports 1..{self.port_count}")
        if plugged:
            self.unplugged.discard(port)
            return
        self.unplugged.add(port)
        if port != self.port_count:
            self.boards[port - 1].power_off()

    def _v3_user(self) -> V3User:
        path = self.opts.state_dir / "snmp_v3.json"
        if path.exists():
            data = json.loads(path.read_text())
        else:
            data = {"auth_key": secrets.token_urlsafe(12), "priv_key": secrets.token_urlsafe(12)}
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            path.with_suffix(".tmp").replace(path)
        return V3User(self.opts.v3_user, data["auth_key"], data["priv_key"], "SHA", "AES")

    # -- lifecycle ---------------------------------------------------------------------------
    def _identities(self) -> list[Identity]:
        """Board identities persist in state_dir so TFTP folders and host keys survive restarts."""
        path = self.opts.state_dir / "boards.json"
        known: list[dict[str, Any]] = []
        if path.exists():
            known = json.loads(path.read_text()).get("boards", [])
        models = self.opts.models or DEFAULT_MODELS
        used_serials = {b["serial"] for b in known}
        ids = []
        for i in range(self.opts.boards):
            if i < len(known):
                b = known[i]
                ids.append(Identity(b["name"], i + 1, b["model"], b["serial"], b["mac"],
                                    b.get("ssh_port", 0)))
                continue
            model = models[i % len(models)]
            serial = f"{self.rng.getrandbits(32):08x}"
            while serial in used_serials:
                serial = f"{self.rng.getrandbits(32):08x}"
            used_serials.add(serial)
            oui = MODELS[model][2]
            mac = oui + "".join(f":{self.rng.getrandbits(8):02x}" for _ in range(3))
            ids.append(Identity(f"pi-{i + 1}", i + 1, model, serial, mac))
        return ids

    def _save_identities(self) -> None:
        path = self.opts.state_dir / "boards.json"
        previous: list[dict[str, Any]] = []
        if path.exists():
            previous = json.loads(path.read_text()).get("boards", [])
        current = [
            {"name": b.name, "model": b.identity.model, "serial": b.identity.serial, "mac": b.identity.mac,
             "ssh_port": b.identity.ssh_port}
            for b in self.boards
        ]
        # boards beyond the current count keep their identity for a later, larger run
        data = {"boards": current + previous[len(current):]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    async def start(self) -> None:
        opts = self.opts
        make_private_dir(opts.state_dir)  # host keys and the boards' SD cards
        for d in (opts.tftp_root, opts.nfs_root):
            d.mkdir(parents=True, exist_ok=True)
        self.mode, self.mode_reason = mode.resolve(opts.mode)
        network_knobs = (opts.link_mbit or opts.uplink_mbit or opts.link_loss or opts.network
                         or opts.dhcp_config)
        if self.mode != mode.REAL and network_knobs:
            raise RuntimeError("link rates, packet loss and the board network need the real mode"
                               f" (here: {self.mode_reason})")
        nfs_key_path = opts.state_dir / "nfs_host_ed25519_key"
        nfs_key = _load_or_create_key(nfs_key_path)
        try:
            speeds = spread(opts.boards, opts.card_write_mbps, opts.card_read_mbps)
            for ident, speed in zip(self._identities(), speeds, strict=True):
                bdir = opts.state_dir / "boards" / ident.name
                bdir.mkdir(parents=True, exist_ok=True)
                board = Board(ident, opts, bdir, nfs_key, self.rng)
                board.card_speed = speed
                self.boards.append(board)
                self._by_name[board.name] = board
            if self.mode == mode.REAL:
                _write_public_key(nfs_key_path, nfs_key)
                firmware.complete_nfs_root(opts.nfs_root, nfs_key_path)
                await self._start_fabric()
            else:
                for board in self.boards:
                    board.runtime = InProcessRuntime(board)
            self._save_identities()
            self.v3 = self._v3_user()
            self.switch.options.v3_users = (self.v3,)
            await self.switch.start()
        except BaseException:
            with contextlib.suppress(StopTimeout):  # (logged) the failure to start is the news
                await self.stop()
            raise
        self.started = True
        log.info("rpi cluster: %d boards (%s mode), SNMP on %s:%d", len(self.boards), self.mode, opts.host,
                 self.switch.port)

    async def _start_fabric(self) -> None:
        opts = self.opts
        self.fabric = Fabric(opts.state_dir, len(self.boards), opts.network,
                             dhcp=opts.dhcp_config is not None)
        plan = await self.fabric.start([(b.identity.port, b.identity.mac) for b in self.boards], self._event)
        for board in self.boards:
            board.runtime = RealRuntime(board, self.fabric, str(plan.board_ip(board.identity.port)))
        if opts.uplink_mbit is not None:
            await self.shape(None, opts.uplink_mbit)
        if opts.link_mbit is not None:
            await asyncio.gather(*(self.shape(b.name, opts.link_mbit) for b in self.boards))
        if opts.link_loss > 0:
            for b in self.boards:  # one ruleset for the switch: one change at a time
                await self.set_loss(b.name, opts.link_loss)
        self._activity = asyncio.create_task(self._follow_activity(), name="rpi-activity")
        if opts.dhcp_config is not None:
            self._dhcp_watch = asyncio.create_task(self._follow_dhcp_config(opts.dhcp_config),
                                                   name="rpi-dhcp")

    async def _follow_dhcp_config(self, conf: Path) -> None:
        """Restarts dnsmasq whenever the file changes, as the pimaster's operator (or its path
        unit) does after `piseduce agent network-config --output`."""
        assert self.fabric is not None
        served: bytes | None = None
        while True:
            try:
                text = await asyncio.to_thread(conf.read_bytes)
            except OSError:
                text = None
            if text is not None and text != served:
                served = text
                try:
                    await self.fabric.serve_dhcp(conf)
                    self.dhcp_served += 1
                    log.info("dnsmasq (re)started with %s", conf)
                except FabricError as exc:
                    log.warning("dnsmasq with %s: %s", conf, exc)
            await asyncio.sleep(DHCP_POLL_S)

    async def _event(self, message: dict[str, Any]) -> None:
        if message.get("event") == "exit":
            board = self.boards[int(message["index"]) - 1]
            board.system_ended(str(message.get("reason")), str(message.get("detail", "")))

    async def _follow_activity(self) -> None:
        """CPU use and piseduce-node helpers of real-mode boards drive their power draw; their
        temperature sensor file follows."""
        assert self.fabric is not None
        last: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        at = loop.time()
        while True:
            await asyncio.sleep(ACTIVITY_PERIOD_S)
            try:
                usage = (await self.fabric.call("cpu", timeout=10))["boards"]
            except Exception as exc:  # the next round tries again
                log.debug("board activity: %s", exc)
                continue
            now = loop.time()
            for board in self.boards:
                row = usage.get(str(board.identity.port))
                key = str(board.identity.port)
                if row is None:
                    board.cpu_cores, board.real_helpers = 0.0, 0
                    last.pop(key, None)
                else:
                    used = float(row["cpu"]) - last.get(key, float(row["cpu"]))
                    board.cpu_cores = max(0.0, used / max(now - at, 1e-3))
                    board.real_helpers = int(row["helpers"])
                    last[key] = float(row["cpu"])
                if board.powered:
                    board.write_thermal()
            at = now

    async def shape(self, name: str | None, mbit: float | None) -> None:
        """Fault and topology knob (real mode): a board's link rate, or the uplink's (name None),
        in Mbit/s; None removes the limit."""
        index = 0 if name is None else self.board(name).identity.port
        await self._real().call("shape", index=index, mbit=mbit)

    async def set_loss(self, name: str, percent: float) -> None:
        """Fault knob (real mode): the board's link drops this percentage of packets, both ways."""
        await self._real().call("loss", index=self.board(name).identity.port, percent=percent)

    async def link_down(self, name: str, seconds: float) -> None:
        """Fault knob (real mode): the board's link goes down for `seconds` (real time), as with a
        loose cable; the board keeps running."""
        fabric = self._real()
        index = self.board(name).identity.port
        await fabric.call("link", index=index, up=False)
        try:
            await asyncio.sleep(seconds)
        finally:
            if self.board(name).powered:
                await fabric.call("link", index=index, up=True)

    def mode_line(self) -> str:
        plan = self.fabric.plan if self.fabric is not None else None
        if self.mode == mode.REAL and plan is not None:
            return (f"mode: real - each board is a Linux host on the board network {plan.network}"
                    f" (this host is {plan.gateway} on {plan.host_if})")
        return ("mode: in-process - SSH servers on loopback ports with a small command set"
                f" ({self.mode_reason})")

    def _real(self) -> Fabric:
        if self.fabric is None:
            raise RuntimeError(f"links are simulated in the real mode only (this cluster: {self.mode})")
        return self.fabric

    async def stop(self) -> None:
        """Stops everything, each part within a bounded time; the first part that could not be
        stopped is raised after the others were (StopTimeout says which)."""
        failures: list[BaseException] = []
        try:
            await stop_task(self._activity, "the board activity follower")
        except StopTimeout as exc:
            failures.append(exc)
        self._activity = None
        try:
            await stop_task(self._dhcp_watch, "the dnsmasq file follower")
        except StopTimeout as exc:
            failures.append(exc)
        self._dhcp_watch = None
        await self.switch.stop()
        results = await asyncio.gather(*(b.close() for b in self.boards), return_exceptions=True)
        for board, result in zip(self.boards, results, strict=True):
            if isinstance(result, StopTimeout):
                failures.append(result)
            elif isinstance(result, BaseException):
                log.warning("%s: close: %r", board.name, result)
        if self.fabric is not None:
            try:
                await self.fabric.stop()
            except StopTimeout as exc:
                failures.append(exc)
            self.fabric = None
        self.started = False
        for failure in failures:
            log.error("rpi cluster stop: %s", failure)
        if failures:
            raise failures[0]

    async def __aenter__(self) -> RpiCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _v3_inventory(self) -> dict[str, str]:
        v3 = self.v3
        if v3 is None:
            return {}
        return {"v3_user": v3.name, "v3_auth_protocol": v3.auth, "v3_auth_key": v3.auth_key,
                "v3_priv_protocol": v3.priv, "v3_priv_key": v3.priv_key}

    # -- queries -----------------------------------------------------------------------------
    def board(self, name: str) -> Board:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no board named {name!r}") from None

    def _dhcp_inventory(self) -> dict[str, Any] | None:
        if self.opts.dhcp_config is None or self.fabric is None:
            return None
        return {"config": str(self.opts.dhcp_config), "lease_file": str(self.fabric.lease_file),
                "served": self.dhcp_served}

    def inventory(self) -> dict[str, Any]:
        plan = self.fabric.plan if self.fabric is not None else None
        return {
            "mode": self.mode,
            # real mode: the board network, and this host's end of the switch's uplink
            "network": str(plan.network) if plan else None,
            "uplink": {"host_if": plan.host_if, "ip": str(plan.gateway)} if plan else None,
            # real mode with --dhcp-config: the file dnsmasq serves, its leases, how often (re)started
            "dhcp": self._dhcp_inventory(),
            "switch": {
                "name": self.opts.switch_name,
                "ip": self.opts.host,
                "snmp_port": self.switch.port,
                "community": self.opts.community,
                "poe_oid": oid_str(POE_ADMIN_OID),
                "oid_offset": 0,
                "port_count": self.port_count,
                "master_port": self.port_count,
                "power_oid": oid_str(VENDORS[self.opts.switch_vendor].power.oid),
                "power_oid_offset": VENDORS[self.opts.switch_vendor].power.offset,
                # The switch also answers v1 and v3; the agent is registered with v2c by default.
                "snmp_version": "v2c",
                **self._v3_inventory(),
            },
            "boards": [{**b.describe(), "switch": self.opts.switch_name} for b in self.boards],
        }
