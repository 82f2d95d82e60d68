"""The real-mode boards: each is a network namespace on the board network (see `fabric`), which
boots its card's system, or the netboot system, as a real Linux host running Debian's sshd
(see `boardsetup`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from piseduce.sim.rpi import firmware
from piseduce.sim.rpi.fabric import Fabric, FabricError
from piseduce.sim.rpi.systems import NoSystem, System

if TYPE_CHECKING:
    from piseduce.sim.rpi.board import Board

log = logging.getLogger(__name__)


class RealRuntime:
    mode = "real"

    def __init__(self, board: Board, fabric: Fabric, ip: str) -> None:
        self.board = board
        self.fabric = fabric
        self.ip = ip
        self.index = board.identity.port

    @property
    def address(self) -> tuple[str, int]:
        return self.ip, 22

    async def link(self, up: bool) -> None:
        await self.fabric.call("link", index=self.index, up=up)

    def spec(self, system: System) -> dict[str, Any]:
        board = self.board
        state = board.state_dir
        netboot = system.kind == "nfs"
        tools = firmware.write_tools(state / "firmware", netboot=netboot, speed=board.card_speed)
        for d in ("root", "scratch"):
            (state / d).mkdir(exist_ok=True)
        spec: dict[str, Any] = {
            "kind": system.kind,
            "hostname": system.hostname,
            "state": str(state),
            "root": str(state / "root"),
            "scratch": str(state / "scratch"),
            "card": str(board.card_path.resolve()),
            "tools": str(tools.resolve()),
            "cpuinfo": str((state / "cpuinfo").resolve()),
            "thermal": str(board.thermal_path.resolve()),
            "console": str(state / "console.log"),
            "ssh": system.ssh_enabled,
            "drop_rate": board.opts.ssh_drop_rate,
            "seed": board.rng.getrandbits(32),
        }
        if self.fabric.dhcp_script is not None:
            spec["dhcp_script"] = str(self.fabric.dhcp_script)
        if netboot:
            spec["nfs_root"] = str(board.opts.nfs_root.resolve())
            spec["binds"] = firmware.python_binds()
        else:
            spec["root_offset"], spec["root_size"] = system.root_offset, system.root_size
        return spec

    async def start(self, system: System) -> None:
        console = self.board.state_dir / "console.log"
        if console.exists() and console.stat().st_size > 1 << 20:
            console.write_bytes(console.read_bytes()[-(1 << 18):])  # the log of the last boots only
        try:
            reply = await self.fabric.call("boot", index=self.index, spec=self.spec(system))
        except FabricError as exc:
            raise NoSystem(str(exc)) from None
        if reply.get("ip"):
            self.ip = str(reply["ip"])  # the address its DHCP lease gave it

    def cut(self) -> None:
        return None  # the halt that follows kills the system: its connections close with it

    async def halt(self) -> None:
        try:
            await self.fabric.call("halt", index=self.index)
        except FabricError as exc:
            log.warning("%s: halt: %s", self.board.name, exc)

    async def close(self) -> None:
        return None  # the fabric goes as a whole
