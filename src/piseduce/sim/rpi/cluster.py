"""A simulated Raspberry Pi cluster: one PoE switch (SNMP) and N boards (SSH), all on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from piseduce.sim.rpi.board import MODELS, Board, Identity
from piseduce.sim.rpi.switch import POE_ADMIN_OID, VENDORS, SnmpSwitch, SwitchOptions, oid_str

log = logging.getLogger(__name__)

DEFAULT_MODELS = ["RPI4B4G", "RPI3B+", "RPI4B8G", "RPI4B2G"]
MASTER_POWER_MW = 6400  # the pimaster (a Pi 4 with a disk) on the uplink port


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

    def __post_init__(self) -> None:
        self.state_dir, self.tftp_root, self.nfs_root = (
            Path(self.state_dir), Path(self.tftp_root), Path(self.nfs_root))
        if self.boards < 1:
            raise ValueError("boards must be at least 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        for name in ("boot_failure_rate", "snmp_loss", "ssh_drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.switch_vendor not in VENDORS:
            raise ValueError(f"unknown switch vendor {self.switch_vendor!r} (one of {', '.join(VENDORS)})")
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


class RpiCluster:
    def __init__(self, opts: ClusterOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.boards: list[Board] = []
        self._by_name: dict[str, Board] = {}
        self.master_enabled = True
        self.switch = SnmpSwitch(
            self,
            SwitchOptions(
                opts.switch_name, opts.host, opts.snmp_port, opts.community, opts.snmp_loss,
                vendor=opts.switch_vendor,
            ),
            self.rng,
        )
        self.started = False

    # -- PortBackend for the switch ----------------------------------------------------------
    @property
    def port_count(self) -> int:
        return len(self.boards) + 1

    def port_enabled(self, port: int) -> bool:
        if port == self.port_count:
            return self.master_enabled
        return self.boards[port - 1].powered

    def set_port_enabled(self, port: int, enabled: bool) -> None:
        if port == self.port_count:
            self.master_enabled = enabled
            return
        board = self.boards[port - 1]
        if enabled:
            board.power_on()
        else:
            board.power_off()
        log.info("PoE port %d (%s) %s", port, board.name, "on" if enabled else "off")

    def port_power_mw(self, port: int) -> int:
        if port == self.port_count:
            return MASTER_POWER_MW if self.master_enabled else 0
        return self.boards[port - 1].power_mw()

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
             "ssh_port": b.ssh_port}
            for b in self.boards
        ]
        # boards beyond the current count keep their identity for a later, larger run
        data = {"boards": current + previous[len(current):]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    async def start(self) -> None:
        opts = self.opts
        for d in (opts.state_dir, opts.tftp_root, opts.nfs_root):
            d.mkdir(parents=True, exist_ok=True)
        nfs_key = _load_or_create_key(opts.state_dir / "nfs_host_ed25519_key")
        try:
            for ident in self._identities():
                bdir = opts.state_dir / "boards" / ident.name
                bdir.mkdir(parents=True, exist_ok=True)
                host_key = _load_or_create_key(bdir / "ssh_host_ed25519_key")
                board = Board(ident, opts, bdir, host_key, nfs_key, self.rng)
                self.boards.append(board)
                self._by_name[board.name] = board
            self._save_identities()
            await self.switch.start()
        except BaseException:
            await self.stop()
            raise
        self.started = True
        log.info("rpi cluster: %d boards, SNMP on %s:%d", len(self.boards), opts.host, self.switch.port)

    async def stop(self) -> None:
        await self.switch.stop()
        await asyncio.gather(*(b.close() for b in self.boards), return_exceptions=True)
        self.started = False

    async def __aenter__(self) -> RpiCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- queries -----------------------------------------------------------------------------
    def board(self, name: str) -> Board:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no board named {name!r}") from None

    def inventory(self) -> dict[str, Any]:
        return {
            "switch": {
                "name": self.opts.switch_name,
                "ip": self.opts.host,
                "snmp_port": self.switch.port,
                "community": self.opts.community,
                "poe_oid": oid_str(POE_ADMIN_OID),
                "oid_offset": 0,
                "port_count": self.port_count,
                "master_port": self.port_count,
                "power_oid": oid_str(VENDORS[self.opts.switch_vendor].oid),
                "power_oid_offset": VENDORS[self.opts.switch_vendor].offset,
            },
            "boards": [{**b.describe(), "switch": self.opts.switch_name} for b in self.boards],
        }
