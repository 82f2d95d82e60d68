"""The fan-out client: how the web UI talks to its agents (DESIGN §5.1).

Every agent is called concurrently, each call bounded by one overall deadline
(`agent_timeout_seconds`), and each agent has a circuit breaker: after a transport failure
(refused, timed out) it is skipped at once for a cool-down, so one dead agent costs a page at most
one deadline, then nothing. A background task re-checks every agent's health and info on a
period, persists the status, and closes the breaker of an agent that came back, so it is
connected again without anyone clicking. Every failure is turned into words for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from piseduce import crypto
from piseduce.config import WebuiConfig
from piseduce.db import write_session
from piseduce.webui.models import (
    AGENT_CONNECTED,
    AGENT_ERROR,
    AGENT_UNAUTHORIZED,
    AGENT_UNREACHABLE,
    Agent,
    User,
    utcnow,
)

log = logging.getLogger(__name__)

CREDENTIAL_TYPES = {"g5k": "Grid'5000", "iot-lab": "IoT-LAB"}
MAX_COOLDOWN = 30.0


@dataclass(frozen=True)
class AgentRef:
    """A snapshot of one agent row, with its token decrypted (memory only)."""

    id: int
    name: str
    host: str
    port: int
    base_url: str
    token: str
    node_type: str
    site: str
    status: str
    last_error: str
    needs_credentials: bool


@dataclass(frozen=True)
class Identity:
    """The end user on whose behalf the web UI calls an agent."""

    email: str
    role: str
    # node_type -> {"user", "password"} decrypted; only for the types the user set up.
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)


SERVICE_IDENTITY = Identity(email="piseduce-webui", role="user")


@dataclass
class Reply:
    agent: AgentRef
    ok: bool
    status: int  # 0 when there was no HTTP answer
    data: Any = None
    error: str = ""

    @property
    def words(self) -> str:
        return f"{self.agent.name}: {self.error}"


@dataclass
class Breaker:
    failures: int = 0
    open_until: float = 0.0
    last_error: str = ""

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.last_error = ""

    def failure(self, now: float, error: str) -> None:
        self.failures += 1
        self.open_until = now + min(MAX_COOLDOWN, 5.0 * 2 ** (self.failures - 1))
        self.last_error = error


def detail_words(detail: Any) -> str:
    """An agent's {"detail": ...} in words; pydantic's 422 list becomes 'field: message; ...'."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
                msg = str(item.get("msg", "invalid value"))
                msg = msg.removeprefix("Value error, ")
                parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts) or "invalid request"
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {v}" for k, v in detail.items())
    return str(detail)


def user_identity(user: User, fernet: Fernet) -> Identity:
    creds: dict[str, dict[str, str]] = {}
    for node_type, login, secret in (
        ("g5k", user.g5k_user, user.g5k_password),
        ("iot-lab", user.iotlab_user, user.iotlab_password),
    ):
        if login and secret:
            try:
                creds[node_type] = {"user": login, "password": crypto.decrypt_str(fernet, secret)}
            except ValueError:
                log.warning(
                    "cannot decrypt the %s credentials of %s (key file changed?)", node_type, user.email
                )
    return Identity(email=user.email, role=user.role, credentials=creds)


class AgentHub:
    def __init__(self, cfg: WebuiConfig, factory: sessionmaker[Session], fernet: Fernet) -> None:
        self.cfg = cfg
        self.factory = factory
        self.fernet = fernet
        self.timeout = cfg.agent_timeout_seconds
        self.breakers: dict[int, Breaker] = {}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100),
            follow_redirects=False,
        )
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ registry

    def ref(self, agent: Agent) -> AgentRef:
        try:
            token = crypto.decrypt_str(self.fernet, agent.token)
        except ValueError:
            token = ""  # shown as an error on call: the key file does not match
        return AgentRef(
            id=agent.id,
            name=agent.name,
            host=agent.host,
            port=agent.port,
            base_url=agent.base_url,
            token=token,
            node_type=agent.node_type,
            site=agent.site,
            status=agent.status,
            last_error=agent.last_error,
            needs_credentials=agent.needs_credentials,
        )

    def refs(self) -> list[AgentRef]:
        with self.factory() as db:
            return [self.ref(a) for a in db.scalars(select(Agent).order_by(Agent.name))]

    def breaker(self, agent_id: int) -> Breaker:
        return self.breakers.setdefault(agent_id, Breaker())

    def is_down(self, agent_id: int) -> bool:
        return self.breaker(agent_id).is_open(time.monotonic())

    # ------------------------------------------------------------ calls

    def _headers(self, ref: AgentRef, who: Identity | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {ref.token}"}
        if who is not None:
            headers["X-Piseduce-User"] = who.email
            headers["X-Piseduce-Role"] = who.role
            cred = who.credentials.get(ref.node_type)
            if cred is not None and (ref.needs_credentials or ref.node_type in CREDENTIAL_TYPES):
                headers["X-Piseduce-Credentials"] = crypto.encrypt_json(self.fernet, cred)
        return headers

    async def call(
        self,
        ref: AgentRef,
        method: str,
        path: str,
        *,
        who: Identity | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
        use_breaker: bool = True,
    ) -> Reply:
        now = time.monotonic()
        brk = self.breaker(ref.id)
        if use_breaker and brk.is_open(now):
            wait = brk.open_until - now
            return Reply(ref, False, 0, error=f"unreachable ({brk.last_error}); next try in {wait:.0f} s")
        if not ref.token:
            return Reply(
                ref,
                False,
                0,
                error="its token cannot be decrypted with this key file; delete the agent and add it again",
            )
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self.client.request(
                    method, ref.base_url + path, headers=self._headers(ref, who), json=json, params=params
                )
                body = resp.content
        except (TimeoutError, httpx.TimeoutException):
            error = f"did not answer within {self.timeout:g} s"
            brk.failure(time.monotonic(), error)
            return Reply(ref, False, 0, error=f"unreachable: {error}")
        except httpx.ConnectError:
            error = f"connection to {ref.host}:{ref.port} refused or impossible"
            brk.failure(time.monotonic(), error)
            return Reply(ref, False, 0, error=f"unreachable: {error}")
        except httpx.HTTPError as exc:
            error = f"HTTP error ({type(exc).__name__})"
            brk.failure(time.monotonic(), error)
            return Reply(ref, False, 0, error=f"unreachable: {error}")
        brk.success()
        data: Any = None
        if body:
            try:
                data = resp.json()
            except ValueError:
                data = None
        if resp.is_success:
            return Reply(ref, True, resp.status_code, data)
        return Reply(ref, False, resp.status_code, data, error=self._error_words(resp.status_code, data))

    @staticmethod
    def _error_words(status: int, data: Any) -> str:
        detail = data.get("detail") if isinstance(data, dict) else None
        if status == 401:
            return "the agent refused the token (wrong token)"
        text = detail_words(detail) if detail is not None else ""
        if status == 404 and not text:
            return "not found"
        if status >= 500:
            return f"the agent failed (HTTP {status})" + (f": {text}" if text else "")
        return text or f"refused (HTTP {status})"

    async def fan_out(
        self, refs: Iterable[AgentRef], fn: Callable[[AgentRef], Awaitable[Reply]]
    ) -> list[Reply]:
        return list(await asyncio.gather(*(fn(r) for r in refs)))

    # ------------------------------------------------------------ health

    async def probe(self, host: str, port: int, token: str) -> tuple[str, str, dict[str, Any]]:
        """(status, error in words, /api/info) of an agent, whether it is stored or not."""
        ref = AgentRef(
            0,
            f"{host}:{port}",
            host,
            port,
            Agent(host=host, port=port).base_url,
            token,
            "",
            "",
            "",
            "",
            False,
        )
        health = await self.call(ref, "GET", "/api/health", use_breaker=False)
        if not health.ok:
            if health.status == 0:
                return AGENT_UNREACHABLE, health.error, {}
            return AGENT_ERROR, f"/api/health answered: {health.error}", {}
        # The health check and Add Agent act on nobody's behalf: the web UI names itself.
        info = await self.call(ref, "GET", "/api/info", who=SERVICE_IDENTITY, use_breaker=False)
        if info.status == 401:
            return AGENT_UNAUTHORIZED, info.error, {}
        if not info.ok:
            status = AGENT_UNREACHABLE if info.status == 0 else AGENT_ERROR
            return status, f"/api/info answered: {info.error}", {}
        if not isinstance(info.data, dict) or "node_type" not in info.data:
            return AGENT_ERROR, "/api/info did not describe a PiSeduce agent", {}
        return AGENT_CONNECTED, "", info.data

    async def check_agent(self, agent_id: int) -> str:
        with self.factory() as db:
            agent = db.get(Agent, agent_id)
            if agent is None:
                return ""
            ref = self.ref(agent)
        status, error, info = await self.probe(ref.host, ref.port, ref.token)
        brk = self.breaker(agent_id)
        if status == AGENT_CONNECTED:
            brk.success()
        elif status == AGENT_UNREACHABLE:
            brk.failure(time.monotonic(), error.removeprefix("unreachable: "))
        with write_session(self.factory) as db:
            agent = db.get(Agent, agent_id)
            if agent is None:
                return ""
            if agent.status != status:
                log.info("agent %s: %s -> %s %s", agent.name, agent.status, status, error)
            agent.status = status
            agent.last_error = error
            if status == AGENT_CONNECTED:
                agent.last_seen = utcnow()
                agent.node_type = str(info.get("node_type", ""))[:32]
                agent.site = str(info.get("site", ""))[:128]
                agent.version = str(info.get("version", ""))[:64]
                agent.needs_credentials = bool(info.get("needs_credentials", False))
        return status

    async def check_all(self) -> None:
        with self.factory() as db:
            ids = list(db.scalars(select(Agent.id)))
        await asyncio.gather(*(self.check_agent(i) for i in ids), return_exceptions=True)

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # the checker must survive anything (a DB hiccup...)
                log.exception("agent health check failed")
            await asyncio.sleep(self.cfg.health_check_seconds)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._health_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.client.aclose()


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
