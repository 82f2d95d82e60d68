"""The simulator's network and board supervisor: `python -m piseduce.sim.rpi.netd`.

It runs as PID 1 of a PID namespace of its own (started by `fabric.Fabric` through
`setpriv --pdeathsig KILL unshare --pid --fork --kill-child --mount --mount-proc`), so that
everything it starts dies with it, by the kernel's rule: when a PID namespace's init exits,
every process in the namespace is killed. It dies when the simulator dies (the parent-death
signal, and the end of its standard input). Nothing it creates outlives its processes:

- the switch is a network namespace held by one `sleep` process, with a bridge (`br0`), the
  uplink's switch end (`up0`) and one veth per board port (`p<N>`); the uplink's host end is the
  only interface in the host's namespace, and a veth dies with the namespace of its peer;
- each board's network namespace (its `eth0`, MAC, address) is held by a `sleep` process too;
- a booted system is a PID, mount and UTS namespace entered through the board's network
  namespace (see `netd_systems`); its mounts and loop device go when its last process exits.

The simulator drives it with one JSON object per line on stdin (`{"id": N, "op": ..., ...}`)
and reads one reply per request on stdout (`{"id": N, "ok": true, ...}` or `"ok": false` with
an `error`), plus events (`{"event": "exit", "index": N, "reason": ...}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import Any

from piseduce.sim.rpi.netd_dhcp import Dnsmasq, ask_address
from piseduce.sim.rpi.netd_systems import Systems, run_cmd

log = logging.getLogger("piseduce.sim.rpi.netd")

HOLD = ["sleep", "infinity"]


def tbf_args(dev: str, mbit: float | None) -> list[str]:
    """`tc` arguments shaping dev's egress to mbit Mbit/s (token bucket), or removing the shaping."""
    if mbit is None:
        return ["qdisc", "del", "dev", dev, "root"]
    rate_bps = mbit * 1e6
    # 10 ms of traffic, and at least two GSO super-packets, so TCP is not starved by the bucket
    burst = max(int(rate_bps / 8 / 100), 2 * 65536 + 3000)
    return ["qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{int(rate_bps)}bit",
            "burst", str(burst), "latency", "50ms"]


def loss_ruleset(losses: dict[int, float]) -> str:
    """An nftables ruleset for the switch: packets to or from port N dropped with losses[N] %."""
    rules = []
    for index, percent in sorted(losses.items()):
        if percent <= 0:
            continue
        threshold = round(percent * 100)  # in 1/10000
        chance = "" if threshold >= 10000 else f" numgen random mod 10000 < {max(1, threshold)}"
        for side in ("iifname", "oifname"):
            rules.append(f'    {side} "p{index}"{chance} counter drop')
    body = "\n".join(rules)
    return ("table bridge piseduce_loss\ndelete table bridge piseduce_loss\n"
            "table bridge piseduce_loss {\n  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"{body}\n  }}\n}}\n")


class Netd:
    def __init__(self) -> None:
        self.switch: asyncio.subprocess.Process | None = None
        self.holders: dict[int, asyncio.subprocess.Process] = {}
        self.host_if = ""
        self.losses: dict[int, float] = {}
        self.systems = Systems(self.emit, self.board_pid)
        self.dnsmasq = Dnsmasq()
        self.dhcp_boards: set[int] = set()  # ports whose board gets its address by DHCP
        self.out_lock = asyncio.Lock()

    # -- plumbing ------------------------------------------------------------------------------
    async def emit(self, message: dict[str, Any]) -> None:
        async with self.out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    def board_pid(self, index: int) -> int:
        holder = self.holders.get(index)
        if holder is None:
            raise ValueError(f"no board port {index}")
        return holder.pid

    def switch_pid(self) -> int:
        if self.switch is None:
            raise ValueError("the switch is not set up (op fabric first)")
        return self.switch.pid

    async def in_ns(self, pid: int, cmd: list[str], stdin: str | None = None) -> str:
        return await run_cmd(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *cmd], stdin)

    async def hold(self) -> asyncio.subprocess.Process:
        """A process alone in a new network namespace: the namespace lives as long as it does."""
        return await asyncio.create_subprocess_exec(
            "unshare", "--net", "--", *HOLD, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    # -- operations ----------------------------------------------------------------------------
    async def op_fabric(self, host_if: str, host_cidr: str, alias: str) -> dict[str, Any]:
        self.switch = await self.hold()
        await asyncio.sleep(0)  # the namespace exists once unshare has run: checked by nsenter below
        await self._wait_ns(self.switch.pid)
        sw = self.switch.pid
        await run_cmd(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "up0", "netns", str(sw)])
        self.host_if = host_if
        await run_cmd(["ip", "-batch", "-"], "\n".join([
            f"link set {host_if} alias {json.dumps(alias)}",
            f"addr add {host_cidr} dev {host_if}",
            f"link set {host_if} up",
        ]) + "\n")
        await self.in_ns(sw, ["ip", "-batch", "-"], "link set lo up\nlink add br0 type bridge\n"
                         "link set br0 up\nlink set up0 master br0 up\n")
        return {"switch_pid": sw}

    async def _wait_ns(self, pid: int) -> None:
        """unshare has made the namespace once /proc/PID/ns/net differs from ours."""
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(500):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/net") != mine and os.readlink(f"/proc/{pid}/exe").endswith(
                        "sleep"):
                    return
            await asyncio.sleep(0.005)
        raise RuntimeError("a network namespace was not created in time")

    async def op_ports(self, boards: list[dict[str, Any]]) -> dict[str, Any]:
        """One veth per board: `p<N>` on the bridge (down: the port is off), `eth0` in the board."""
        holders = await asyncio.gather(*(self.hold() for _ in boards))
        await asyncio.gather(*(self._wait_ns(h.pid) for h in holders))
        lines = []
        for b, holder in zip(boards, holders, strict=True):
            index = int(b["index"])
            self.holders[index] = holder
            lines += [f"link add p{index} type veth peer name eth0 netns {holder.pid}",
                      f"link set p{index} master br0"]
        await self.in_ns(self.switch_pid(), ["ip", "-batch", "-"], "\n".join(lines) + "\n")

        async def board_side(b: dict[str, Any]) -> None:
            script = ["link set lo up", f"link set eth0 address {b['mac']}", "link set eth0 up"]
            if b.get("dhcp"):
                self.dhcp_boards.add(int(b["index"]))  # its address: at each boot (op_boot)
            else:
                script += [f"addr add {b['cidr']} dev eth0", f"route add default via {b['gateway']}"]
            await self.in_ns(self.board_pid(int(b["index"])), ["ip", "-batch", "-"], "\n".join(script) + "\n")

        await asyncio.gather(*(board_side(b) for b in boards))
        return {}

    async def op_link(self, index: int, up: bool) -> dict[str, Any]:
        self.board_pid(index)
        await self.in_ns(self.switch_pid(), ["ip", "link", "set", f"p{index}", "up" if up else "down"])
        return {}

    async def op_shape(self, index: int, mbit: float | None) -> dict[str, Any]:
        """index 0 is the uplink: host end (towards the switch) and up0 (towards the host);
        a board's port: p<N> (towards the board) and the board's eth0 (towards the switch)."""
        if index == 0:
            pairs = [(None, self.host_if), (self.switch_pid(), "up0")]
        else:
            pairs = [(self.switch_pid(), f"p{index}"), (self.board_pid(index), "eth0")]
        for pid, dev in pairs:
            cmd = ["tc", *tbf_args(dev, mbit)]
            try:
                await (run_cmd(cmd) if pid is None else self.in_ns(pid, cmd))
            except RuntimeError:
                if mbit is not None:
                    raise  # removing a shaping that was never set is not an error
        return {}

    async def op_loss(self, index: int, percent: float) -> dict[str, Any]:
        self.board_pid(index)
        if not 0 <= percent <= 100:
            raise ValueError("loss is a percentage between 0 and 100")
        self.losses[index] = percent
        await self.in_ns(self.switch_pid(), ["nft", "-f", "-"], loss_ruleset(self.losses))
        return {}

    async def op_boot(self, index: int, spec: dict[str, Any]) -> dict[str, Any]:
        ip = None
        if index in self.dhcp_boards:
            # the board's firmware asks for an address before it fetches anything: no lease, no boot
            await self.in_ns(self.board_pid(index), ["ip", "-4", "addr", "flush", "dev", "eth0"])
            ip = await ask_address(self.board_pid(index), str(spec["dhcp_script"]))
        reply = await self.systems.boot(index, spec)
        return {**reply, "ip": ip} if ip else reply

    async def op_dhcp(self, conf: str, state: str) -> dict[str, Any]:
        """(Re)starts the board network's dnsmasq with the file `conf`."""
        return await self.dnsmasq.start(conf, state)

    async def op_halt(self, index: int) -> dict[str, Any]:
        await self.systems.halt(index)
        return {}

    async def op_cpu(self) -> dict[str, Any]:
        return {"boards": await asyncio.to_thread(self.systems.usage, self.systems.namespaces())}

    async def op_shutdown(self) -> dict[str, Any]:
        await self.systems.halt_all()
        await self.dnsmasq.stop()
        return {}

    # -- the request loop ----------------------------------------------------------------------
    async def handle(self, request: dict[str, Any]) -> None:
        rid = request.pop("id", None)
        op = str(request.pop("op", ""))
        method = getattr(self, f"op_{op}", None)
        try:
            if method is None:
                raise ValueError(f"unknown op {op!r}")
            result = await method(**request)
            reply = {"id": rid, "ok": True, **result}
        except Exception as exc:  # every failure is answered, never fatal
            log.warning("op %s failed: %s", op, exc)
            reply = {"id": rid, "ok": False, "error": str(exc) or type(exc).__name__}
        await self.emit(reply)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 22)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks: set[asyncio.Task[None]] = set()
        while True:
            line = await reader.readline()
            if not line:
                break  # the simulator is gone: so is everything here
            try:
                request = json.loads(line)
            except json.JSONDecodeError:
                continue
            shutdown = request.get("op") == "shutdown"
            task = asyncio.create_task(self.handle(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if shutdown:
                await task
                break
        for task in list(tasks):
            task.cancel()


def _reap_until(child: int) -> None:
    """PID 1's other duty: reaping the orphans of the namespace (halted boards' inits)."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main() -> None:
    if os.getpid() == 1:
        child = os.fork()  # before any thread or event loop: the supervisor runs as PID 2
        if child:
            _reap_until(child)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="netd %(levelname)s: %(message)s")
    # As PID 1, exiting is enough: the kernel kills every process of this PID namespace,
    # which releases the namespaces, veths, the bridge, the mounts and the loop devices.
    asyncio.run(Netd().serve())


if __name__ == "__main__":
    main()
