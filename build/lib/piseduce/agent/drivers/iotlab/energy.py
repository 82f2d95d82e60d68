"""Energy of an IoT-LAB reservation, from the testbed's own measures: a monitoring profile that
measures the node's power, and the consumption file the testbed writes for it on the site's SSH
frontend (`~/.iot-lab/<exp_id>/consumption/<node>.oml`, OML text; the REST API serves no measure).

Opt-in, per deployment (the form's `energy` box), not by default: to read that file the agent logs
in to the frontend as the user, with its own key (`ssh_key_file`), which it adds to the user's
IoT-LAB SSH keys — a change to their account that they should choose — and without a profile of
their own it puts one on the node (`piseduce_energy_<board>`, power, voltage and current every
~0.56 s). A profile of theirs that measures power serves as it is.

The files are read once the experiments have stopped (the testbed flushes them then), when the
reservation is destroyed: every experiment of the reservation (a redeploy makes a new one), each
integrated by the trapezoid rule (agent/energy.py) and added up into `driver_state["energy"]`,
where the Manage page and the API find a finished reservation's figure. Reading never fails a
destroy: what cannot be read is said in the reservation's events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent import energy as energy_sum
from piseduce.agent.drivers.base import InvalidParams, StepContext, StepError
from piseduce.agent.drivers.iotlab.client import Client, RemoteError, TransientError
from piseduce.agent.drivers.iotlab.experiments import node_address
from piseduce.agent.drivers.raspberry.ssh import load_or_create_agent_key, public_key_line
from piseduce.agent.lifecycle import DEPLOYED
from piseduce.agent.models import Node, Reservation

if TYPE_CHECKING:
    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

BOARDS = ("m3", "a8")  # the boards whose control node measures consumption (iotlabcli's profiles)
OML_HEADER_LINES = 9  # as oml-plot-tools reads them: 8 header lines and a blank one
MAX_FILE_BYTES = 32 * 1024 * 1024
CONNECT_TIMEOUT = 20.0
TAIL_BYTES = 64 * 1024  # ~900 measures: more than a monitor period's




def agent_profile(board: str) -> dict[str, Any]:
    """The profile the agent puts on a node when the user has none that measures power:
    what `iotlab-profile addm3 -n piseduce_energy_m3 -power -voltage -current -period 1100 -avg 512`
    makes (one averaged measure every 0.56 s: ~6,400 lines an hour)."""
    return {
        "profilename": f"piseduce_energy_{board}",
        "nodearch": board,
        "power": "dc",
        "consumption": {"period": 1100, "average": 512, "power": True, "voltage": True, "current": True},
        "radio": None,
    }


def measures_power(profile: Any) -> bool:
    cons = profile.get("consumption") if isinstance(profile, dict) else None
    return isinstance(cons, dict) and bool(cons.get("power"))


def oml_file(address: str) -> str:
    """`m3-3.grenoble.iot-lab.info` → `m3_3.oml`, the testbed's name for the node's file."""
    return address.split(".", 1)[0].replace("-", "_") + ".oml"


def parse_oml(text: str, *, header: bool = True) -> list[tuple[dt.datetime, float]]:
    """(time, W) of a consumption file's measures in time order (`header` False: a piece of its
    end). Lines that are not a schema-1 measure (8 tab-separated fields) are skipped, as
    oml-plot-tools skips them."""
    out: list[tuple[dt.datetime, float]] = []
    for line in text.splitlines()[OML_HEADER_LINES if header else 0 :]:
        fields = line.split("\t")
        if len(fields) != 8 or fields[1] != "1":
            continue
        try:
            t_s, t_us, watts = int(fields[3]), int(fields[4]), float(fields[5])
        except ValueError:
            continue
        if not 0 <= t_us < 1_000_000 or not 0 <= watts < 1e4 or not 0 < t_s < 2**32:
            continue
        out.append((dt.datetime.fromtimestamp(t_s + t_us / 1e6, dt.UTC), watts))
    out.sort(key=lambda s: s[0])
    return out


def combine(parts: list[energy_sum.Energy]) -> energy_sum.Energy | None:
    """Several experiments' figures as one: energies and durations added, the highest peak."""
    if not parts:
        return None
    # From each mean (3 decimals) rather than each Wh (4 decimals: an M3 uses ~0.06 Wh an hour).
    joules = sum(p.mean_w * p.seconds for p in parts)
    seconds = sum(p.seconds for p in parts)
    mean = joules / seconds if seconds > 0 else max(p.mean_w for p in parts)
    return energy_sum.Energy(
        wh=round(joules / 3600, 4),
        mean_w=round(mean, 3),
        peak_w=max(p.peak_w for p in parts),
        samples=sum(p.samples for p in parts),
        seconds=seconds,
    )


class IotlabEnergy:
    def __init__(self, config: AgentConfig, client: Client) -> None:
        self.config = config
        self.client = client

    # ------------------------------------------------------------ where the files are

    def frontend(self) -> tuple[str, int]:
        spec = self.config.iotlab_frontend or f"{self.config.iot_site}.iot-lab.info"
        host, _, port = spec.rpartition(":") if ":" in spec else (spec, "", "22")
        return host, int(port)

    def known_hosts(self) -> Path:
        return self.config.resolve(self.config.iotlab_frontend_known_hosts)

    def key(self) -> asyncssh.SSHKey:
        return load_or_create_agent_key(self.config.resolve(self.config.ssh_key_file))

    # ------------------------------------------------------------ the deploy form

    async def check(
        self, board: str, profile: str, credentials: Mapping[str, str] | None
    ) -> None:
        """InvalidParams when energy cannot be measured for this deployment, saying why."""
        if board not in BOARDS:
            boards = " and ".join(BOARDS)
            raise InvalidParams("energy", f"IoT-LAB measures consumption on {boards} nodes only")
        if not self.known_hosts().is_file():
            raise InvalidParams(
                "energy",
                "this agent cannot read IoT-LAB's consumption files: its operator has not pinned the "
                "site frontend's host key (iotlab_frontend_known_hosts); deploy without energy",
            )
        if not profile:
            return
        try:
            chosen = await self.client.call(credentials, lambda api: api.get_profile(profile))
        except (RemoteError, TransientError) as exc:
            raise InvalidParams("profile", f"profile {profile!r} could not be read ({exc})") from None
        if not measures_power(chosen):
            raise InvalidParams(
                "energy",
                f"your profile {profile!r} does not measure power: add -power to it, or choose no "
                "profile and the agent puts its own on the node",
            )

    # ------------------------------------------------------------ at deployment

    async def prepare(self, ctx: StepContext, creds: Mapping[str, str], board: str) -> str:
        """Before submitting: the agent's key among the user's IoT-LAB keys (the frontend lets it
        read their files) and, without a profile of theirs, the agent's profile in their account.
        Returns the profile to associate with the node."""
        line = public_key_line(self.key())
        try:
            answer = await self.client.call(creds, lambda api: api.get_ssh_keys())
            keys = [k for k in (answer or {}).get("sshkeys") or [] if isinstance(k, str)]
            if not any(k.split()[:2] == line.split()[:2] for k in keys):
                body = {"sshkeys": [*keys, f"{line.split()[0]} {line.split()[1]} piseduce-agent"]}
                await self.client.call(creds, lambda api: api.set_ssh_keys(body))
                await ctx.log("The agent's SSH key added to your IoT-LAB keys (to read consumption files)")
            chosen = str(ctx.params.get("profile") or "")
            if chosen:
                return chosen
            profile = agent_profile(board)
            await self.client.call(creds, lambda api: api.add_profile(profile))
            return str(profile["profilename"])
        except RemoteError as exc:
            raise StepError(f"IoT-LAB refused to set up the energy measure: {exc.message}") from None
        except TransientError as exc:
            raise StepError(f"IoT-LAB API unavailable while setting up the energy measure: {exc}") from None

    # ------------------------------------------------------------ while it runs

    def _running(self, sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
        """(login, node, file on the frontend) of the deployed reservations that measure energy."""
        with sessions() as s:
            rows = s.execute(
                select(Reservation, Node.attrs)
                .join(Node, Node.name == Reservation.node_name)
                .where(Reservation.status == DEPLOYED)
            ).all()
            out = []
            for r, attrs in rows:
                state = r.driver_state or {}
                if (r.params or {}).get("energy") and state.get("experiment_id") and state.get("login"):
                    site = self.config.iot_site
                    default = f"{r.node_name}.{site}.iot-lab.info"
                    address = str((attrs or {}).get("network_address") or default)
                    path = f".iot-lab/{int(state['experiment_id'])}/consumption/{oml_file(address)}"
                    out.append((str(state["login"]), r.node_name, path))
            return out

    async def _fetch(self, login: str, paths: list[str], *, tail: bool) -> dict[str, bytes | None]:
        """Each file in one SFTP session: its last TAIL_BYTES (the newest measures) with `tail`,
        else up to MAX_FILE_BYTES from its start; None for a file that does not exist."""
        host, port = self.frontend()
        out: dict[str, bytes | None] = {}
        async with asyncssh.connect(
            host, port, username=login, client_keys=[self.key()], known_hosts=str(self.known_hosts()),
            agent_path=None, config=None, connect_timeout=CONNECT_TIMEOUT, password=None,
            kbdint_auth=False,
        ) as conn, conn.start_sftp_client() as sftp:
            for path in paths:
                try:
                    async with sftp.open(path, "rb") as f:
                        if tail:
                            size = (await f.stat()).size or 0
                            await f.seek(max(0, size - TAIL_BYTES))
                        data = await f.read(TAIL_BYTES if tail else MAX_FILE_BYTES)
                    out[path] = data if isinstance(data, bytes) else data.encode()
                except asyncssh.SFTPNoSuchFile:
                    out[path] = None
        return out

    async def live(self, sessions: sessionmaker[Session], window: float) -> list[tuple[str, str, float]]:
        """("power", node, W) of every deployed reservation that measures energy: the mean of its
        measures of the last `window` seconds (the monitor's period), so that Manage shows the
        energy so far, as for a Raspberry Pi, and the total stays when the samples are dropped."""
        running = await asyncio.to_thread(self._running, sessions)
        by_login: dict[str, list[tuple[str, str]]] = {}
        for login, node, path in running:
            by_login.setdefault(login, []).append((node, path))
        out: list[tuple[str, str, float]] = []
        for login, items in by_login.items():
            try:
                files = await self._fetch(login, [p for _n, p in items], tail=True)
            except (OSError, asyncssh.Error) as exc:
                log.warning("IoT-LAB frontend unreadable for %s: %s", login, exc)
                continue
            for node, path in items:
                data = files.get(path)
                measures = parse_oml(data.decode(errors="replace"), header=False) if data else []
                if not measures:
                    continue
                since = measures[-1][0] - dt.timedelta(seconds=window)
                recent = [w for t, w in measures if t >= since]
                out.append(("power", node, sum(recent) / len(recent)))
        return out

    # ------------------------------------------------------------ at destroy

    async def collect(self, ctx: StepContext) -> None:
        """Read, integrate and store the reservation's energy; never raises (the destroy goes on)."""
        if not ctx.params.get("energy") or energy_sum.KEY in ctx.state:
            return
        login = str(ctx.state.get("login") or (ctx.credentials or {}).get("user") or "")
        ids = [int(i) for i in ctx.state.get("experiments") or []]
        if not login or not ids:
            return
        name = oml_file(node_address(self.config.iot_site, ctx.reservation))
        paths = [f".iot-lab/{i}/consumption/{name}" for i in ids]
        try:
            files = await self._fetch(login, paths, tail=False)
        except (OSError, asyncssh.Error) as exc:
            await ctx.log(f"Energy not measured: the IoT-LAB frontend could not be read ({exc})", "warning")
            return
        parts = []
        for path in paths:
            data = files.get(path)
            used = energy_sum.integrate(parse_oml(data.decode(errors="replace"))) if data else None
            if used is not None:
                parts.append(used)
        total = combine(parts)
        if total is None:
            await ctx.log("Energy not measured: IoT-LAB wrote no consumption measure for the node", "warning")
            return
        ctx.state[energy_sum.KEY] = total.as_dict()
        await ctx.log(
            f"Energy: {total.wh:.4f} Wh over {total.samples} IoT-LAB measures (peak {total.peak_w} W)"
        )
