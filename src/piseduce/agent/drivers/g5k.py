"""The `g5k` driver: servers of one Grid'5000 site, reserved and deployed through its REST API.

Booking: ONE OAR job per PiSeduce reservation (one node each), of type `deploy`, whose
`properties` name exactly that host (`host in ('grisou-1.nancy.grid5000.fr')`), with the
reservation's duration as walltime and an advance `reservation` date for a future start. One job
per reservation (rather than one per booking request) is deliberate: PiSeduce books, extends and
destroys each node on its own, and ending one reservation must never touch another (DESIGN §5.2),
which a shared multi-node job could not guarantee. The jobs of one request are submitted
together; if OAR refuses one, the others are deleted and the whole booking is rolled back with
OAR's message.

Processes: `deploy`/`redeploy` = wait for the job to run (with back-off), submit a Kadeploy run
of the chosen environment with the user's SSH keys, poll it until `terminated` (the node's result
must be `OK`); `destroy` = delete the job (already gone is success). Extension uses the walltime
API. Every step is bounded in time (scaled by `timeout_scale`).

Jobs not created by this agent (their name does not start with its prefix) are only ever read,
to show their nodes as busy: they are never modified or deleted (the seed's NOTE).

Credentials: the user's Grid'5000 login arrives decrypted in memory (`credentials` /
`ctx.credentials`); it goes into the HTTP client's Basic auth and nowhere else — never into a
message, an event, a log line or the driver state.

Optional config keys: `g5k_user` + `g5k_password_file` (an account used to read the node
inventory and the site's status when no user credentials come with the request),
`g5k_http_timeout` (s, default 30), `g5k_api_attempts` (default 4), `g5k_status_cache_seconds`
(default 10).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from piseduce.agent.drivers.base import (
    ActionRefused,
    BookingRefused,
    BusyInterval,
    CredentialsRequired,
    Driver,
    DriverError,
    FormField,
    InvalidParams,
    NodeSpec,
    Process,
    ReservationView,
    Step,
    StepContext,
    StepError,
)
from piseduce.agent.drivers.g5k_client import (
    G5kAuthError,
    G5kClient,
    G5kError,
    G5kNotFound,
    G5kUnavailable,
    oar_reservation,
    oar_walltime,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

SETTINGS_HINT = "Settings → G5k Credentials"
# A start further than this in the future becomes an OAR advance reservation.
ADVANCE_SECONDS = 60.0
# Step bounds at timeout_scale 1 (seconds).
JOB_START_TIMEOUT = 1800.0  # OAR starts a deploy job within minutes of its start time
KADEPLOY_TIMEOUT = 1800.0  # a Kadeploy run takes 5 to 15 minutes
KADEPLOY_EXPECTED = 400.0  # for the progress bar only
DELETE_TIMEOUT = 300.0
POLL_FIRST, POLL_MAX = 2.0, 30.0
# Consecutive failed polls (each already retried by the client) before a step gives up.
MAX_POLL_FAILURES = 5

ACTIVE_JOB_STATES = ("waiting", "launching", "running", "hold", "tolaunch", "toackreservation", "finishing")
ENDED_JOB_STATES = ("terminated", "error")

_FQDN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$")
_SSH_KEY = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$"
)


def _ts(value: Any) -> dt.datetime | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC) if seconds > 0 else None


def _hhmm(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class G5kDriver(Driver):
    node_type = "g5k"
    needs_credentials = True
    remote_inventory = True

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session]) -> None:
        super().__init__(config, sessions)
        self.http_timeout = config.g5k_http_timeout
        self.attempts = config.g5k_api_attempts
        self.status_ttl = config.g5k_status_cache_seconds
        self.scale = config.timeout_scale
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", config.agent_name).strip("-") or "agent"
        # Every job this agent makes is named with this prefix: it tells ours from the others.
        self.job_prefix = f"piseduce-{slug}-"
        # Tests may route the HTTP client elsewhere (an ASGI transport).
        self.transport: httpx.AsyncBaseTransport | None = None
        self._inventory: list[NodeSpec] | None = None
        self._inventory_at = 0.0
        self._envs: list[dict[str, Any]] | None = None
        self._envs_at = 0.0
        self._status: dict[str, Any] | None = None
        self._status_at = 0.0
        self._poll_wait: dict[tuple[int, str], float] = {}

    # ------------------------------------------------------------ credentials and client

    @property
    def site(self) -> str:
        return self.config.g5k_site

    def _client(self, creds: tuple[str, str] | None) -> G5kClient:
        user, password = creds if creds else (None, None)
        return G5kClient(
            self.config.g5k_api_url,
            self.site,
            user,
            password,
            timeout=self.http_timeout,
            attempts=self.attempts,
            backoff=1.0 * self.scale,
            transport=self.transport,
        )

    @staticmethod
    def _user_creds(credentials: Mapping[str, str] | None) -> tuple[str, str] | None:
        if not credentials:
            return None
        user, password = credentials.get("user"), credentials.get("password")
        if not user or not password:
            return None
        return str(user), str(password)

    def _require(self, credentials: Mapping[str, str] | None) -> tuple[str, str]:
        creds = self._user_creds(credentials)
        if creds is None:
            raise CredentialsRequired("no Grid'5000 login was forwarded with the request")
        return creds

    def _service_creds(self, credentials: Mapping[str, str] | None) -> tuple[str, str] | None:
        """The caller's login, or the agent's own read-only account from the config."""
        creds = self._user_creds(credentials)
        if creds is not None:
            return creds
        user, pw_file = self.config.g5k_user, self.config.g5k_password_file
        if user and pw_file:
            try:
                password = self.config.resolve(str(pw_file)).read_text(encoding="utf-8").strip()
            except OSError as exc:
                log.warning("cannot read g5k_password_file %s: %s", pw_file, exc.strerror)
                return None
            if password:
                return str(user), password
        return None

    @staticmethod
    def _hook_error(exc: G5kError, what: str) -> DriverError:
        """An API failure during a request of the agent API, as the error the API maps."""
        if isinstance(exc, G5kAuthError):
            return CredentialsRequired(exc.message)
        if isinstance(exc, G5kUnavailable):
            return DriverError(f"{what}: {exc.message}")
        return DriverError(f"{what}: {exc.message}")

    @staticmethod
    def _step_error(exc: G5kError, what: str) -> StepError:
        if isinstance(exc, G5kAuthError):
            return StepError(f"{exc.message}: check your Grid'5000 login in {SETTINGS_HINT}")
        if isinstance(exc, G5kUnavailable):
            return StepError(f"{what}: {exc.message}")
        return StepError(f"{what}: {exc.message}")

    def _step_creds(self, ctx: StepContext) -> tuple[str, str]:
        creds = self._user_creds(ctx.credentials)
        if creds is None:
            raise StepError(f"Grid'5000 credentials missing: set them in {SETTINGS_HINT}, then try again")
        return creds

    # ------------------------------------------------------------ inventory

    async def sync_nodes(self, credentials: Mapping[str, str] | None = None) -> list[NodeSpec] | None:
        """The site's nodes from the reference API (queues with `default`), minus dead ones;
        cached for `inventory_refresh_seconds` (the agent's Inventory serialises the refreshes)."""
        if (
            self._inventory is not None
            and time.monotonic() - self._inventory_at < self.config.inventory_refresh_seconds
        ):
            return list(self._inventory)
        creds = self._service_creds(credentials)
        if creds is None:
            raise CredentialsRequired("no Grid'5000 login was forwarded to read the node list")
        try:
            async with self._client(creds) as api:
                clusters = await api.clusters()
                per_cluster = await asyncio.gather(*(api.nodes(str(c["uid"])) for c in clusters))
                status = await api.status()
        except G5kError as exc:
            raise self._hook_error(exc, "reading the Grid'5000 node list") from exc
        specs = self._specs(clusters, per_cluster, status)
        self._inventory, self._inventory_at = specs, time.monotonic()
        self._status, self._status_at = status, time.monotonic()
        log.info("Grid'5000 %s: %d nodes in the inventory", self.site, len(specs))
        return list(specs)

    def _specs(
        self, clusters: list[dict[str, Any]], per_cluster: list[list[dict[str, Any]]], status: dict[str, Any]
    ) -> list[NodeSpec]:
        states = status.get("nodes") or {}
        specs: list[NodeSpec] = []
        for cluster, nodes in zip(clusters, per_cluster, strict=True):
            for ref in nodes:
                queues = (ref.get("supported_job_types") or {}).get("queues") or []
                if "default" not in queues:
                    continue
                adapters = ref.get("network_adapters") or []
                fqdn = (
                    next(
                        (
                            a.get("network_address")
                            for a in adapters
                            if a.get("mounted") and a.get("network_address")
                        ),
                        None,
                    )
                    or f"{ref['uid']}.{self.site}.grid5000.fr"
                )
                if not _FQDN.match(str(fqdn)):
                    continue
                hard = (states.get(fqdn) or {}).get("hard")
                if hard is None or hard == "dead":
                    continue
                arch = ref.get("architecture") or {}
                ram = int((ref.get("main_memory") or {}).get("ram_size") or 0)
                specs.append(
                    NodeSpec(
                        name=str(ref["uid"]),
                        ip=str(fqdn),
                        status="available" if hard in ("alive", "standby") else "maintenance",
                        properties={
                            "cluster": str(cluster["uid"]),
                            "cores": int(arch.get("nb_threads") or 0),
                            "memory_gb": round(ram / 1024**3),
                            "model": str(
                                (ref.get("chassis") or {}).get("name") or cluster.get("model") or ""
                            ),
                            "site": self.site,
                        },
                        attrs={"fqdn": str(fqdn), "arch": str(arch.get("platform_type") or "x86_64")},
                    )
                )
        return specs

    # ------------------------------------------------------------ the remote calendar

    async def remote_busy(
        self, start: dt.datetime, end: dt.datetime, credentials: Mapping[str, str] | None = None
    ) -> list[BusyInterval]:
        """Other jobs (of anyone, made outside this agent) holding nodes between start and end."""
        creds = self._service_creds(credentials)
        if creds is None:
            # Nothing can be read without a login; the booking itself will ask for one.
            return []
        status = await self._site_status(creds)
        now = dt.datetime.now(dt.UTC)
        out: list[BusyInterval] = []
        for fqdn, entry in (status.get("nodes") or {}).items():
            name = str(fqdn).split(".")[0]
            reservations = entry.get("reservations")
            if reservations is None:
                # No job details (anonymous view): a busy node is held at least for now.
                if str(entry.get("soft", "")).startswith("busy"):
                    out.append(BusyInterval(name, now, now + dt.timedelta(hours=1)))
                continue
            for job in reservations:
                if str(job.get("name") or "").startswith(self.job_prefix):
                    continue  # ours: already in PiSeduce's own calendar
                if str(job.get("state") or "").lower() in ENDED_JOB_STATES:
                    continue
                begin = _ts(job.get("started_at")) or _ts(job.get("scheduled_at")) or now
                finish = begin + dt.timedelta(seconds=int(job.get("walltime") or 3600))
                if begin < end and start < finish:
                    out.append(
                        BusyInterval(
                            name, begin, finish, f"Grid'5000 job {job.get('uid')} (outside PiSeduce)"
                        )
                    )
        return out

    async def _site_status(self, creds: tuple[str, str]) -> dict[str, Any]:
        if self._status is not None and time.monotonic() - self._status_at < self.status_ttl:
            return self._status
        try:
            async with self._client(creds) as api:
                status = await api.status()
        except G5kError as exc:
            raise self._hook_error(exc, "reading the Grid'5000 site status") from exc
        self._status, self._status_at = status, time.monotonic()
        return status

    # ------------------------------------------------------------ booking hooks

    def _fqdn(self, node_name: str, attrs: Mapping[str, Any]) -> str:
        fqdn = str(attrs.get("fqdn") or f"{node_name}.{self.site}.grid5000.fr")
        if not _FQDN.match(fqdn):
            # It goes into an OAR SQL filter: never anything but a host name.
            raise BookingRefused(f"{node_name}: invalid host name {fqdn!r}")
        return fqdn

    def job_name(self, reservation_id: int) -> str:
        return f"{self.job_prefix}r{reservation_id}"

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        creds = self._require(credentials)
        now = dt.datetime.now(dt.UTC)
        async with self._client(creds) as api:
            results = await asyncio.gather(
                *(self._submit(api, r, now) for r in reservations), return_exceptions=True
            )
            made = [res for res in results if isinstance(res, dict)]
            failures = [
                (r, res)
                for r, res in zip(reservations, results, strict=True)
                if isinstance(res, BaseException)
            ]
            if not failures:
                self._status = None  # the calendar changed
                return {
                    r.id: res for r, res in zip(reservations, results, strict=True) if isinstance(res, dict)
                }
            # All or nothing: the jobs OAR accepted for this booking go away with it.
            for state in made:
                try:
                    await api.delete_job(state["job_id"])
                except G5kError as rollback_exc:
                    log.warning(
                        "rolling back: cannot delete Grid'5000 job %s: %s",
                        state["job_id"],
                        rollback_exc.message,
                    )
        reservation, err = failures[0]
        if isinstance(err, G5kAuthError):
            raise CredentialsRequired(err.message)
        if isinstance(err, G5kUnavailable):
            raise DriverError(f"nothing was booked: {err.message}")
        if isinstance(err, G5kError):
            raise BookingRefused(f"Grid'5000 refused the job for {reservation.node.name}: {err.message}")
        if isinstance(err, DriverError):
            raise err
        raise DriverError(f"booking {reservation.node.name} on Grid'5000 failed: {err}")

    async def _submit(self, api: G5kClient, r: ReservationView, now: dt.datetime) -> dict[str, Any]:
        fqdn = self._fqdn(r.node.name, r.node.attrs)
        future = r.start > now + dt.timedelta(seconds=ADVANCE_SECONDS)
        begin = r.start if future else now
        walltime = oar_walltime((r.end - begin).total_seconds())
        payload: dict[str, Any] = {
            "name": self.job_name(r.id),
            "resources": f"nodes=1,walltime={walltime}",
            "types": ["deploy"],
            "properties": f"host in ('{fqdn}')",
            # A deploy job's command runs on the frontend; it must outlive any walltime extension.
            "command": "sleep infinity",
            "queue": "default",
        }
        if future:
            payload["reservation"] = oar_reservation(r.start)
        job = await api.submit_job(payload)
        uid = job["uid"]
        state = str(job.get("state") or "").lower()
        if state == "error":
            raise G5kError(f"OAR put job {uid} in error: {job.get('message') or 'no reason given'}")
        assigned = job.get("assigned_nodes")
        if assigned and list(assigned) != [fqdn]:
            await api.delete_job(uid)
            raise G5kError(f"OAR assigned {', '.join(assigned)} instead of {fqdn}")
        scheduled = _ts(job.get("scheduled_at"))
        if not future and scheduled is not None and scheduled > now + dt.timedelta(minutes=5):
            # OAR queued it behind a job PiSeduce could not see: the node is not free now.
            await api.delete_job(uid)
            raise G5kError(
                f"{fqdn} is held by another Grid'5000 job: "
                f"OAR could start this one only at {_hhmm(scheduled)}"
            )
        log.info("Grid'5000 job %s submitted for %s (reservation %s)", uid, fqdn, r.id)
        return {
            "job_id": uid,
            "job_name": payload["name"],
            "fqdn": fqdn,
            "g5k_user": api.user,
            "walltime": walltime,
            **({"oar_reservation": payload["reservation"]} if future else {}),
        }

    async def on_extend(
        self, reservation: ReservationView, new_end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        job_id = reservation.driver_state.get("job_id")
        if job_id is None:
            raise ActionRefused("no Grid'5000 job is attached to this reservation")
        creds = self._require(credentials)
        try:
            async with self._client(creds) as api:
                job = await api.job(job_id)
                state = str(job.get("state") or "").lower()
                if state in ENDED_JOB_STATES:
                    raise ActionRefused(f"Grid'5000 job {job_id} has already ended ({state})")
                if state != "running":
                    raise ActionRefused(
                        f"Grid'5000 extends only running jobs and job {job_id} is {state}: "
                        "extend again once the reservation has started"
                    )
                started = _ts(job.get("started_at")) or _ts(job.get("scheduled_at")) or reservation.start
                current = int(job.get("walltime") or 0)
                needed = math.ceil((new_end - started).total_seconds()) - current
                if needed <= 0:
                    return {"walltime": oar_walltime(current)}
                delta = "+" + oar_walltime(needed)
                try:
                    answer = await api.change_walltime(job_id, delta)
                except G5kError as exc:
                    if isinstance(exc, G5kAuthError | G5kUnavailable):
                        raise
                    raise ActionRefused(f"Grid'5000 refused to extend job {job_id}: {exc.message}") from exc
                after = await api.job(job_id)
        except G5kError as exc:
            raise self._hook_error(exc, "extending the Grid'5000 job") from exc
        granted = int(after.get("walltime") or 0)
        log.info("Grid'5000 job %s: walltime change %s (%s)", job_id, delta, answer.get("status", "accepted"))
        out: dict[str, Any] = {"walltime": oar_walltime(granted)}
        if granted < current + needed:
            # OAR accepted the request but grants it when its scheduler gets to it.
            out["walltime_pending"] = delta
        return out

    async def on_cancel(self, reservation: ReservationView, credentials: Mapping[str, str] | None) -> None:
        job_id = reservation.driver_state.get("job_id")
        if job_id is None:
            return
        creds = self._user_creds(credentials)
        if creds is None:
            if reservation.end <= dt.datetime.now(dt.UTC):
                return  # the job ended with its walltime
            raise CredentialsRequired(f"no Grid'5000 login was forwarded to delete job {job_id}")
        try:
            async with self._client(creds) as api:
                deleted = await api.delete_job(job_id)
        except G5kError as exc:
            raise self._hook_error(exc, f"deleting Grid'5000 job {job_id}") from exc
        self._status = None
        log.info("Grid'5000 job %s %s", job_id, "deleted" if deleted else "was already gone")

    # ------------------------------------------------------------ deploy form

    async def _environments(self, credentials: Mapping[str, str] | None) -> list[dict[str, Any]]:
        fresh = (
            self._envs is not None
            and time.monotonic() - self._envs_at < self.config.inventory_refresh_seconds
        )
        if fresh and self._envs is not None:
            return self._envs
        creds = self._service_creds(credentials)
        if creds is None:
            if self._envs is not None:
                return self._envs
            raise CredentialsRequired("no Grid'5000 login was forwarded to list the environments")
        try:
            async with self._client(creds) as api:
                envs = await api.environments()
        except G5kError as exc:
            if self._envs is not None and not isinstance(exc, G5kAuthError):
                log.warning(
                    "cannot refresh the Grid'5000 environments (%s): using the last list", exc.message
                )
                return self._envs
            raise self._hook_error(exc, "listing the Grid'5000 environments") from exc
        self._envs, self._envs_at = envs, time.monotonic()
        return envs

    @staticmethod
    def _env_names(envs: list[dict[str, Any]], arch: str) -> list[str]:
        names = {str(e["name"]) for e in envs if e.get("name") and str(e.get("arch") or arch) == arch}
        return sorted(names)

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        arch = str(reservation.node.attrs.get("arch") or "x86_64")
        names = self._env_names(await self._environments(credentials), arch)
        default = "debian12-min" if "debian12-min" in names else (names[0] if names else None)
        return [
            FormField(
                name="environment",
                label="Environment",
                kind="select",
                choices=names,
                required=True,
                default=default,
                help="A Kadeploy environment of the site: "
                "https://www.grid5000.fr/w/Getting_Started#Deploying_nodes_with_Kadeploy",
            ),
            FormField(
                name="ssh_keys",
                label="SSH public keys",
                kind="ssh_keys",
                help="Installed in root's authorized_keys on the node (your account's key by default)",
            ),
        ]

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        env = params.get("environment")
        if not isinstance(env, str) or not env.strip():
            raise InvalidParams("environment", "choose an environment")
        env = env.strip()
        arch = str(reservation.node.attrs.get("arch") or "x86_64")
        envs = await self._environments(credentials)
        names = self._env_names(envs, arch)
        aliases = {str(e.get("alias")): str(e["name"]) for e in envs if e.get("alias") and e.get("name")}
        if env not in names:
            if env in aliases and aliases[env] in names:
                env = aliases[env]
            else:
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise InvalidParams("environment", f"{env!r} is not an environment of {self.site} ({shown})")
        keys = params.get("ssh_keys") or []
        if isinstance(keys, str):
            keys = [k for k in keys.splitlines() if k.strip()]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidParams("ssh_keys", "must be a list of SSH public keys")
        keys = [k.strip() for k in keys if k.strip()]
        if len(keys) > 32:
            raise InvalidParams("ssh_keys", "at most 32 keys")
        for k in keys:
            if len(k) > 16384 or not _SSH_KEY.match(k):
                raise InvalidParams("ssh_keys", f"not an SSH public key: {k[:40]!r}")
        return {"environment": env, "ssh_keys": keys}

    # ------------------------------------------------------------ processes

    def processes(self) -> dict[str, Process]:
        t = self.scale
        poll = max(0.05, 0.5 * t)
        deploy = (
            Step("prepare", self._prepare, label="prepare the deployment"),
            Step(
                "wait_job",
                self._wait_job_run,
                self._wait_job_done,
                label="wait for the OAR job",
                # done() fails first, with OAR's message; this is the engine's safety net.
                fail_after=(JOB_START_TIMEOUT + 120) * t,
                poll=poll,
            ),
            Step(
                "kadeploy",
                self._kadeploy_run,
                self._kadeploy_done,
                label="deploy with Kadeploy",
                fail_after=KADEPLOY_TIMEOUT * t,
                poll=poll,
                weight=8,
            ),
            Step("connect", self._connect, label="ready"),
        )
        destroy = (
            Step(
                "delete_job",
                self._delete_run,
                self._delete_done,
                label="delete the OAR job",
                fail_after=DELETE_TIMEOUT * t,
                poll=poll,
            ),
        )
        return {
            "deploy": Process("deploy", deploy, "deploying", "deployed"),
            "redeploy": Process("redeploy", deploy, "deploying", "deployed"),
            "destroy": Process("destroy", destroy, "destroying", "ended"),
        }

    def connection_info(self, reservation: ReservationView) -> dict[str, Any]:
        return dict(reservation.connection)

    async def _backoff(self, ctx: StepContext, step: str) -> None:
        """Polls start every POLL_FIRST seconds and slow down to POLL_MAX (scaled)."""
        key = (ctx.reservation.id, step)
        wait = self._poll_wait.get(key)
        nxt = POLL_FIRST * self.scale if wait is None else min(wait * 1.5, POLL_MAX * self.scale)
        self._poll_wait[key] = nxt
        if wait is not None:
            await asyncio.sleep(wait)

    @staticmethod
    async def _report(ctx: StepContext, percent: int, message: str) -> None:
        """Progress of a poll; the message (an event in the timeline) only when it changes."""
        if ctx.state.get("last_report") == message:
            await ctx.progress(percent)
            return
        ctx.state["last_report"] = message
        await ctx.progress(percent, message)

    def _api_down(self, ctx: StepContext, exc: G5kUnavailable, what: str) -> None:
        """A poll could not reach the API: tolerated a few times in a row, then fatal."""
        n = int(ctx.state.get("api_failures", 0)) + 1
        ctx.state["api_failures"] = n
        log.warning("%s: %s (%d/%d)", what, exc.message, n, MAX_POLL_FAILURES)
        if n >= MAX_POLL_FAILURES:
            raise StepError(f"{what}: {exc.message} ({n} polls in a row failed)")

    # -- deploy steps

    async def _prepare(self, ctx: StepContext) -> None:
        self._step_creds(ctx)
        if ctx.state.get("job_id") is None:
            raise StepError("no Grid'5000 job is attached to this reservation: destroy it and book again")
        # A new Kadeploy run for this action (a redeploy keeps the job, not the last run).
        ctx.state["deployment"] = None
        ctx.state["deploy_requested_at"] = time.time()
        ctx.state["wait_since"] = time.time()
        ctx.state["api_failures"] = 0
        for step in ("wait_job", "kadeploy", "delete_job"):
            self._poll_wait.pop((ctx.reservation.id, step), None)
        ctx.connection.clear()
        await ctx.progress(100)

    async def _wait_job_run(self, ctx: StepContext) -> None:
        await ctx.log(f"waiting for OAR job {ctx.state['job_id']} to run")

    async def _wait_job_done(self, ctx: StepContext) -> bool:
        await self._backoff(ctx, "wait_job")
        job_id = ctx.state["job_id"]
        creds = self._step_creds(ctx)
        try:
            async with self._client(creds) as api:
                job = await api.job(job_id)
        except G5kNotFound:
            raise StepError(
                f"OAR job {job_id} no longer exists: destroy this reservation and book again"
            ) from None
        except G5kUnavailable as exc:
            self._api_down(ctx, exc, f"reading OAR job {job_id}")
            return False
        except G5kError as exc:
            raise self._step_error(exc, f"reading OAR job {job_id}") from exc
        ctx.state["api_failures"] = 0
        state = str(job.get("state") or "").lower()
        fqdn = str(ctx.state.get("fqdn") or self._fqdn(ctx.node.name, ctx.node.attrs))
        if state == "running":
            assigned = list(job.get("assigned_nodes") or [])
            if assigned and fqdn not in assigned:
                raise StepError(f"OAR job {job_id} runs on {', '.join(assigned)}, not on {fqdn}")
            await ctx.progress(100, f"OAR job {job_id} is running")
            return True
        if state in ENDED_JOB_STATES:
            raise StepError(
                f"OAR job {job_id} is {state}: {job.get('message') or 'it ended'}; "
                "destroy this reservation and book again"
            )
        since = float(ctx.state.get("wait_since") or time.time())
        deadline = max(since, ctx.reservation.start.timestamp()) + JOB_START_TIMEOUT * self.scale
        if time.time() > deadline:
            raise StepError(
                f"OAR job {job_id} did not start in time "
                f"(still {state}: {job.get('message') or 'no message'})"
            )
        scheduled = _ts(job.get("scheduled_at"))
        when = f", scheduled at {_hhmm(scheduled)}" if scheduled else ""
        await self._report(ctx, 10 if state == "waiting" else 60, f"OAR job {job_id} is {state}{when}")
        return False

    async def _kadeploy_run(self, ctx: StepContext) -> None:
        if ctx.state.get("deployment"):
            return  # submitted by this action already (a resumed step)
        creds = self._step_creds(ctx)
        fqdn = str(ctx.state.get("fqdn") or self._fqdn(ctx.node.name, ctx.node.attrs))
        env = str(ctx.params.get("environment") or "")
        if not env:
            raise StepError("no environment was chosen")
        payload: dict[str, Any] = {"nodes": [fqdn], "environment": env}
        keys = [k for k in ctx.params.get("ssh_keys") or [] if isinstance(k, str) and k.strip()]
        if keys:
            payload["key"] = "\n".join(keys) + "\n"
        since = float(ctx.state.get("deploy_requested_at") or time.time())
        try:
            async with self._client(creds) as api:
                adopted = await self._running_deployment(api, fqdn, since)
                dep = adopted or await api.submit_deployment(payload, since)
        except G5kError as exc:
            raise self._step_error(exc, f"Kadeploy refused to deploy {env} on {fqdn}") from exc
        ctx.state["deployment"] = dep["uid"]
        ctx.state["deployment_started"] = time.time()
        await ctx.log(f"Kadeploy deployment {dep['uid']} of {env} on {fqdn} submitted")

    async def _running_deployment(self, api: G5kClient, fqdn: str, since: float) -> dict[str, Any] | None:
        """A run of this node submitted since `since` whose answer was lost (crash, dead proxy)."""
        for status in ("waiting", "processing"):
            for d in await api.items(f"{api.site_path}/deployments", user=api.user, status=status):
                if d.get("nodes") == [fqdn] and float(d.get("created_at") or 0) >= since - 1:
                    return d
        return None

    async def _kadeploy_done(self, ctx: StepContext) -> bool:
        await self._backoff(ctx, "kadeploy")
        uid = str(ctx.state["deployment"])
        creds = self._step_creds(ctx)
        fqdn = str(ctx.state.get("fqdn") or self._fqdn(ctx.node.name, ctx.node.attrs))
        try:
            async with self._client(creds) as api:
                dep = await api.deployment(uid)
        except G5kUnavailable as exc:
            self._api_down(ctx, exc, f"reading Kadeploy deployment {uid}")
            return False
        except G5kError as exc:
            raise self._step_error(exc, f"reading Kadeploy deployment {uid}") from exc
        ctx.state["api_failures"] = 0
        status = str(dep.get("status") or "")
        env = dep.get("environment") or ctx.params.get("environment")
        if status in ("waiting", "processing"):
            elapsed = time.time() - float(ctx.state.get("deployment_started") or time.time())
            pct = min(95, 5 + int(90 * elapsed / (KADEPLOY_EXPECTED * self.scale)))
            await self._report(ctx, pct, f"Kadeploy {status}: {env} on {fqdn}")
            return False
        if status == "terminated":
            result = (dep.get("result") or {}).get(fqdn) or {}
            if str(result.get("state", "")).upper() == "OK":
                await ctx.progress(100, f"{env} deployed on {fqdn}")
                return True
            if result:
                where = "/".join(str(result[k]) for k in ("macro", "micro") if result.get(k))
                raise StepError(
                    f"Kadeploy could not deploy {env} on {fqdn}: node {result.get('state', 'KO')}"
                    + (f" at {where}" if where else "")
                    + f" (deployment {uid}); redeploy to try again"
                )
            raise StepError(f"Kadeploy deployment {uid} ended without a result for {fqdn}")
        if status == "error":
            raise StepError(f"Kadeploy deployment {uid} failed: {dep.get('output') or 'no reason given'}")
        if status == "canceled":
            raise StepError(f"Kadeploy deployment {uid} was canceled")
        raise StepError(f"Kadeploy deployment {uid} is in an unknown state {status!r}")

    async def _connect(self, ctx: StepContext) -> None:
        fqdn = str(ctx.state.get("fqdn") or self._fqdn(ctx.node.name, ctx.node.attrs))
        login = str(ctx.state.get("g5k_user") or "<your Grid'5000 login>")
        ctx.connection.update(
            {
                "ssh": f"ssh root@{fqdn}",
                "host": fqdn,
                "user": "root",
                "via": "access.grid5000.fr",
                "hint": f"from outside Grid'5000: ssh -J {login}@access.grid5000.fr root@{fqdn}",
            }
        )
        await ctx.log(f"ready: ssh root@{fqdn} (from outside Grid'5000, through access.grid5000.fr)")

    # -- destroy

    def _job_over(self, ctx: StepContext) -> bool:
        return ctx.reservation.end <= dt.datetime.now(dt.UTC)

    async def _delete_run(self, ctx: StepContext) -> None:
        ctx.connection.clear()
        job_id = ctx.state.get("job_id")
        if job_id is None:
            await ctx.log("no Grid'5000 job to delete")
            return
        creds = self._user_creds(ctx.credentials)
        if creds is None:
            if self._job_over(ctx):
                await ctx.log(
                    f"OAR job {job_id} ends with its walltime (no credentials to delete it)", "warning"
                )
                ctx.state["job_gone"] = True
                return
            raise StepError(
                f"Grid'5000 credentials missing to delete OAR job {job_id}: set them in {SETTINGS_HINT}"
            )
        try:
            async with self._client(creds) as api:
                deleted = await api.delete_job(job_id)
        except G5kError as exc:
            if self._job_over(ctx) and not isinstance(exc, G5kAuthError):
                await ctx.log(
                    f"cannot delete OAR job {job_id} ({exc.message}); it ends with its walltime", "warning"
                )
                ctx.state["job_gone"] = True
                return
            raise self._step_error(exc, f"deleting OAR job {job_id}") from exc
        self._status = None
        ctx.state["job_gone"] = not deleted
        await ctx.log(f"OAR job {job_id} {'deleted' if deleted else 'was already gone'}")

    async def _delete_done(self, ctx: StepContext) -> bool:
        job_id = ctx.state.get("job_id")
        if job_id is None or ctx.state.get("job_gone"):
            return True
        await self._backoff(ctx, "delete_job")
        creds = self._step_creds(ctx)
        try:
            async with self._client(creds) as api:
                job = await api.job(job_id)
        except G5kNotFound:
            return True
        except G5kUnavailable as exc:
            if self._job_over(ctx):
                return True
            self._api_down(ctx, exc, f"reading OAR job {job_id}")
            return False
        except G5kError as exc:
            raise self._step_error(exc, f"reading OAR job {job_id}") from exc
        if str(job.get("state") or "").lower() in ENDED_JOB_STATES:
            ctx.state["job_gone"] = True
            await ctx.progress(100, f"OAR job {job_id} is {job.get('state')}")
            return True
        return False

    async def close(self) -> None:
        self._poll_wait.clear()
