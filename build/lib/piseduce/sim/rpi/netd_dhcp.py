"""DHCP on the board network, as seen from the supervisor (`netd`): the pimaster's dnsmasq, run
with the file `piseduce agent network-config` wrote, and each board's DHCP client.

dnsmasq runs in the host's network namespace (it serves the uplink's host end, as the pimaster's
dnsmasq serves its board interface) but in the supervisor's PID namespace: it dies with the
supervisor, hence with the simulator, even after a SIGKILL. It never touches the host's DNS: its
DNS server is off (`--port=0`), and its pid and lease files are the simulator's.

A board asks for its address when it powers on and boots (busybox `udhcpc` in its network
namespace, with a script that only sets eth0's address): a board that never boots never asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from piseduce.sim.rpi.bounded import wait_process

DNSMASQ = "dnsmasq"
UDHCPC = "udhcpc"
LEASE_FILE = "dnsmasq.leases"  # in the simulator's state folder, dhcp/
STOP_TIMEOUT_S = 5.0
START_TIMEOUT_S, START_POLL_S = 20.0, 0.05  # until dnsmasq's pid file says it serves
# udhcpc: a round of tries x seconds between tries; rounds until a lease or the budget.
CLIENT_TRIES, CLIENT_WAIT_S = 5, 1
CLIENT_BUDGET_S = 15.0  # rounds of udhcpc until a lease or this long: the firmware keeps asking

# The client's script: busybox udhcpc exports ip, mask (prefix length), subnet and router.
CLIENT_SCRIPT = """#!/bin/sh
# The simulated board's DHCP client script (written by the simulator): eth0's address only.
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi ;;
esac
exit 0
"""


def write_client_script(state_dir: Path) -> Path:
    path = state_dir / "dhcp-client.sh"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(CLIENT_SCRIPT)
    tmp.chmod(0o700)
    tmp.replace(path)
    return path


class Dnsmasq:
    """The one dnsmasq of this board network: (re)started with a new file, stopped at shutdown."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.pid_file: Path | None = None

    async def start(self, conf: str, state: str) -> dict[str, Any]:
        """Restarts dnsmasq with `conf` (dnsmasq rereads its main file only when it starts; the
        lease file carries over, so a board keeps its lease unless the new file says otherwise)."""
        checked = await asyncio.create_subprocess_exec(
            DNSMASQ, "--test", f"--conf-file={conf}", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        said, _ = await checked.communicate()
        if checked.returncode != 0:  # the dnsmasq that runs keeps serving the last good file
            raise RuntimeError(f"dnsmasq refuses {conf}: {said.decode(errors='replace').strip()[-300:]}")
        await self.stop()
        folder = Path(state)
        self.pid_file = folder / "dnsmasq.pid"
        log_path = folder / "dnsmasq.log"
        cmd = [DNSMASQ, "--keep-in-foreground", f"--conf-file={conf}", "--port=0",
               f"--pid-file={self.pid_file}", f"--dhcp-leasefile={folder / LEASE_FILE}",
               f"--log-facility={log_path}", "--user=root", "--group=root"]
        with open(log_path, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        # dnsmasq writes its pid file once its DHCP socket is bound: until then a board that asks
        # gets no answer (and, on a loaded host, a bind that fails comes later than any fixed pause).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while proc.returncode is None and loop.time() < deadline:
            if self.pid_file.exists() and self.pid_file.read_text().strip() == str(proc.pid):
                self.proc = proc
                return {"pid": proc.pid}
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_POLL_S):  # (not wait_for: see `bounded`)
                    await proc.wait()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(f"dnsmasq did not start within {START_TIMEOUT_S:.0f} s")
        tail = log_path.read_text(errors="replace").strip().splitlines()[-2:]
        raise RuntimeError(f"dnsmasq did not start (exit {proc.returncode}): {' / '.join(tail)}")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            await wait_process(proc, "dnsmasq", STOP_TIMEOUT_S)
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()


async def ask_address(netns_pid: int, script: str) -> str:
    """The board's DHCP exchange (DISCOVER ... ACK) on its eth0; its address, or RuntimeError.

    udhcpc -n gives up on the first round whose three REQUESTs go unanswered, and dnsmasq answers
    nobody while it pings an address it is about to offer another board (up to 3 s): the board asks
    again, round after round, until CLIENT_BUDGET_S, as a Raspberry Pi's firmware keeps asking."""
    ns = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLIENT_BUDGET_S
    while True:
        out, code = await _udhcpc_round(ns, script)
        if code == 0:
            break
        if loop.time() >= deadline:
            raise RuntimeError("no DHCP lease: no DHCP server answered the board")
        await asyncio.sleep(CLIENT_WAIT_S)
    show = await asyncio.create_subprocess_exec(
        *ns, "ip", "-j", "-4", "addr", "show", "dev", "eth0", stdout=asyncio.subprocess.PIPE)
    text, _ = await show.communicate()
    for link in json.loads(text or b"[]"):
        for addr in link.get("addr_info", []):
            return str(addr["local"])
    raise RuntimeError(f"DHCP: no address on eth0 after the lease ({out.decode(errors='replace')[-200:]})")


async def _udhcpc_round(ns: list[str], script: str) -> tuple[bytes, int]:
    """One udhcpc run (CLIENT_TRIES discovers, one lease at most); its output and exit code."""
    proc = await asyncio.create_subprocess_exec(
        *ns, UDHCPC, "-i", "eth0", "-f", "-q", "-n", "-t", str(CLIENT_TRIES), "-T", str(CLIENT_WAIT_S),
        "-A", str(CLIENT_WAIT_S), "-s", script,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    timeout = CLIENT_TRIES * CLIENT_WAIT_S * 3 + 5
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise RuntimeError(f"no DHCP answer within {timeout} s") from None
    return out, proc.returncode if proc.returncode is not None else -1


def dnsmasq_running(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
