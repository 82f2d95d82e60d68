"""The simulator's side of the board network: starts the supervisor (`netd`) and talks to it.

    fabric = Fabric(state_dir, boards=8)
    await fabric.start([(1, "dc:a6:32:..."), ...], on_event)
    await fabric.call("link", index=1, up=True)
    ...
    await fabric.stop()

The supervisor is started as `setpriv --pdeathsig KILL unshare --pid --fork --kill-child ...`:
if this process dies, even by SIGKILL, the kernel kills the supervisor and, with it, every board,
namespace, veth, bridge, mount and loop device of this simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from piseduce.sim.rpi import netd_dhcp, netplan
from piseduce.sim.rpi.bounded import stop_task, wait_process

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
CALL_TIMEOUT_S = 120.0
SHUTDOWN_TIMEOUT_S = 30.0  # halting every board
EXIT_TIMEOUT_S = 10.0
SUPERVISOR = ["setpriv", "--pdeathsig", "KILL", "--",
              "unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation",
              "private", "--"]


class FabricError(Exception):
    pass


class Fabric:
    def __init__(self, state_dir: Path, boards: int, network: str | None = None, dhcp: bool = False) -> None:
        self.state_dir = state_dir
        self.dhcp = dhcp  # the boards get their addresses from the dnsmasq of `serve_dhcp`
        self.dhcp_script: Path | None = None
        self.boards = boards
        self.wanted_network = network
        self.plan: netplan.Plan | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._reader: asyncio.Task[None] | None = None
        self._on_event: EventHandler | None = None
        self.swept: list[str] = []

    @property
    def network_file(self) -> Path:
        return self.state_dir / "network.json"

    async def start(self, boards: list[tuple[int, str]], on_event: EventHandler) -> netplan.Plan:
        self._on_event = on_event
        self.swept = await asyncio.to_thread(netplan.sweep)
        if self.swept:
            log.warning("removed the uplinks of simulators that are gone: %s", ", ".join(self.swept))
        previous = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            previous = json.loads(self.network_file.read_text())["network"]
        await self._spawn()
        lock = netplan.allocation_lock()
        await asyncio.to_thread(lock.__enter__)
        try:
            network = await asyncio.to_thread(netplan.choose_network, self.boards, self.wanted_network,
                                              previous)
            instance = await asyncio.to_thread(netplan.new_instance)
            plan = netplan.Plan(instance, network)
            await self.call("fabric", host_if=plan.host_if, host_cidr=plan.cidr(plan.gateway),
                            alias=plan.alias(os.getpid()))
        finally:
            lock.__exit__(None, None, None)
        self.plan = plan
        tmp = self.network_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"network": str(network)}))
        tmp.replace(self.network_file)
        if self.dhcp:
            self.dhcp_script = netd_dhcp.write_client_script(self.state_dir)
        ports = [{"index": i, "mac": mac, "cidr": plan.cidr(plan.board_ip(i)), "gateway": str(plan.gateway),
                  "dhcp": self.dhcp} for i, mac in boards]
        await self.call("ports", boards=ports)
        return plan

    @property
    def dhcp_state(self) -> Path:
        return self.state_dir / "dhcp"

    @property
    def lease_file(self) -> Path:
        return self.dhcp_state / netd_dhcp.LEASE_FILE

    async def serve_dhcp(self, conf: Path) -> None:
        """(Re)starts the board network's dnsmasq with the file `conf` (FabricError: it would not)."""
        self.dhcp_state.mkdir(mode=0o700, exist_ok=True)
        await self.call("dhcp", conf=str(conf.resolve()), state=str(self.dhcp_state))

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *SUPERVISOR, sys.executable, "-m", "piseduce.sim.rpi.netd",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 22)
        self._reader = asyncio.create_task(self._read(), name="netd-reader")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "event" in message:
                if self._on_event is not None:
                    try:
                        await self._on_event(message)
                    except Exception:
                        log.exception("board event %s", message)
                continue
            future = self._pending.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(FabricError("the board network supervisor stopped"))
        self._pending.clear()

    async def call(self, op: str, timeout: float = CALL_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        """One request to the supervisor and its reply; FabricError when it fails, is gone, or
        has not answered within `timeout` seconds."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise FabricError("the board network supervisor is not running")
        self._next += 1
        rid = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            async with asyncio.timeout(timeout):  # (not wait_for: see `bounded`)
                proc.stdin.write((json.dumps({"id": rid, "op": op, **args}) + "\n").encode())
                await proc.stdin.drain()
                reply = await future
        except TimeoutError:
            raise FabricError(f"the board network supervisor did not answer {op} within {timeout:g} s"
                              ) from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise FabricError(f"the board network supervisor is gone ({exc})") from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise FabricError(str(reply.get("error", "failed")))
        return reply

    async def stop(self) -> None:
        """Halts every board and ends the supervisor (killed if it does not end by itself), with
        every wait bounded: the kernel removes the rest with the supervisor's PID namespace."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                await self.call("shutdown", timeout=SHUTDOWN_TIMEOUT_S)
            except FabricError as exc:
                log.warning("board network supervisor: shutdown: %s", exc)
            if proc.stdin is not None:
                proc.stdin.close()
            await wait_process(proc, "the board network supervisor", EXIT_TIMEOUT_S)
        if self._reader is not None:
            # its output ends with it (nothing else holds the pipe); bounded all the same
            await asyncio.wait({self._reader}, timeout=EXIT_TIMEOUT_S)
            if not self._reader.done():
                log.warning("the board network supervisor's output did not end: no longer read")
            await stop_task(self._reader, "the reader of the supervisor's output", EXIT_TIMEOUT_S)
        self.proc = None
