"""The fan-out client: how the web UI talks to its agents (DESIGN §5.1).

Every agent is called concurrently, each call bounded by one overall deadline
(`agent_timeout_seconds`), and each agent has a circuit breaker: after a transport failure
(refused, timed out) it is skipped at once for a cool-down, so one dead agent costs a page at most
one deadline, then nothing. A background task re-checks every agent's health and info on a
period, persists the status, and closes the breaker of an agent that came back, so it is
connected again without anyone clicking. Every failure is turned into words for the user.

What an agent answers is read up to a cap and checked against the shape of its route before any
page sees it (agent_answers.py). A host being added is asked `/api/health` without the token
first; the token goes only to a host that answered like an agent, and the admin is told a category
of failure, never the host's own words (`probe`). The database is reached through the web UI's
`Database` (threads), never from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import select

from piseduce import crypto
from piseduce.config import WebuiConfig
from piseduce.protocol import AgentInfo, Feature
from piseduce.webui import agent_answers
from piseduce.webui.agent_pools import AgentPools
from piseduce.webui.answer_memo import AnswerMemo, Memo
from piseduce.webui.database import Database
from piseduce.webui.models import Agent, User

log = logging.getLogger(__name__)

MAX_COOLDOWN = 30.0
R = TypeVar("R")
# An agent's refusal is shown to users (a flash, a page): its start only.
MAX_ERROR_CHARS = 400


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
    # What it last said it supports (an older agent's: read from its node type).
    info: AgentInfo | None = None

    @property
    def about(self) -> AgentInfo:
        return self.info if self.info is not None else stored_info(self.name, self.node_type, self.site, {})

    def supports(self, feature: Feature) -> bool:
        return self.about.supports(feature)


def stored_info(name: str, node_type: str, site: str, stored: dict[str, Any] | None) -> AgentInfo:
    """An agent's info as the web UI stored it; before its first health check (or from a row of
    an older web UI), what an agent of its node type did before the protocol had features."""
    if stored:
        try:
            return AgentInfo.model_validate(stored)
        except ValidationError:
            log.warning("agent %s: its stored /api/info is not readable; asking it again", name)
    legacy = {"name": name or "?", "node_type": node_type or "unknown", "site": site, "version": ""}
    return AgentInfo.model_validate(legacy)


@dataclass(frozen=True)
class Identity:
    """The end user on whose behalf the web UI calls an agent."""

    email: str
    role: str
    # credential kind (protocol.CredentialKind: g5k, iotlab) -> {"user", "password"} decrypted;
    # only for the testbeds the user set up.
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)


SERVICE_IDENTITY = Identity(email="piseduce-webui", role="user")


@dataclass
class Reply:
    agent: AgentRef
    ok: bool
    status: int  # 0 when there was no HTTP answer
    data: Any = None
    error: str = ""
    # Why it failed: "transport" (no answer), "token" (not decryptable here), "too_large",
    # "unexpected" (not JSON; not the protocol's model: agent_client.read), "http" (an error
    # status); "" for a success.
    failure: str = ""
    size: int = 0  # bytes of the answer (a large one is checked in a thread)
    memo: Memo | None = None  # the same answer as last time: its checked models are there

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


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def user_identity(user: User, fernet: Fernet) -> Identity:
    creds: dict[str, dict[str, str]] = {}
    for kind, login, secret in (
        ("g5k", user.g5k_user, user.g5k_password),
        ("iotlab", user.iotlab_user, user.iotlab_password),
    ):
        if login and secret:
            try:
                creds[kind] = {"user": login, "password": crypto.decrypt_str(fernet, secret)}
            except ValueError:
                log.warning("cannot decrypt the %s credentials of %s (key file changed?)", kind, user.email)
    return Identity(email=user.email, role=user.role, credentials=creds)


class AgentHub:
    def __init__(self, cfg: WebuiConfig, database: Database, fernet: Fernet) -> None:
        self.cfg = cfg
        self.database = database
        self.fernet = fernet
        self.timeout = cfg.agent_timeout_seconds
        self.max_answer = cfg.agent_answer_max_bytes
        self.breakers: dict[int, Breaker] = {}
        self.pools = AgentPools(self.timeout)
        self.memo = AnswerMemo()
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
            info=stored_info(agent.name, agent.node_type, agent.site, agent.info),
        )

    async def refs(self) -> list[AgentRef]:
        """Every registered agent (read in the database's threads, like every database call)."""
        rows = await self.database.read(lambda s: list(s.scalars(select(Agent).order_by(Agent.name))))
        return [self.ref(a) for a in rows]

    async def find(self, agent_id: int) -> AgentRef | None:
        return next((r for r in await self.refs() if r.id == agent_id), None)

    def breaker(self, agent_id: int) -> Breaker:
        return self.breakers.setdefault(agent_id, Breaker())

    def is_down(self, agent_id: int) -> bool:
        return self.breaker(agent_id).is_open(time.monotonic())

    # ------------------------------------------------------------ calls

    def _headers(self, ref: AgentRef, who: Identity | None, token: bool = True) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {ref.token}"} if token else {}
        if who is not None:
            headers["X-Piseduce-User"] = who.email
            headers["X-Piseduce-Role"] = who.role
            # Only the login of the testbed this agent acts on (never another testbed's).
            kind = ref.about.credentials
            cred = who.credentials.get(kind) if kind != "none" else None
            if cred is not None:
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
        timeout: float | None = None,
        token: bool = True,
        max_bytes: int | None = None,
    ) -> Reply:
        """One call; `timeout` (seconds) replaces the hub's deadline for a call known to be slow
        (one that asks a remote testbed); `token=False` leaves the agent's token out (a host not
        known to be an agent yet); `max_bytes` replaces the hub's cap on the answer."""
        now = time.monotonic()
        deadline = timeout or self.timeout
        brk = self.breaker(ref.id)
        if use_breaker and brk.is_open(now):
            wait = brk.open_until - now
            return Reply(ref, False, 0, failure="transport",
                         error=f"unreachable ({brk.last_error}); next try in {wait:.0f} s")
        if token and not ref.token:
            return Reply(ref, False, 0, failure="token",
                         error="its token cannot be decrypted with this key file; delete the agent and add "
                         "it again")
        cap = max_bytes or self.max_answer
        try:
            async with asyncio.timeout(deadline):
                client = self.pools.for_agent(ref.id, ref.base_url)
                request = client.build_request(
                    method, ref.base_url + path, headers=self._headers(ref, who, token), json=json,
                    params=params, timeout=deadline,
                )
                resp = await client.send(request, stream=True)
                try:
                    body = await agent_answers.read_capped(resp, cap)
                finally:
                    await resp.aclose()
        except agent_answers.AnswerTooLarge:
            return Reply(ref, False, 0, failure="too_large", error=f"answered more than {cap >> 10} KiB to "
                         f"{method} {path}, more than the web UI reads (agent_answer_max_bytes)")
        except (TimeoutError, httpx.TimeoutException):
            error = f"did not answer within {deadline:g} s"
            brk.failure(time.monotonic(), error)
            return Reply(ref, False, 0, failure="transport", error=f"unreachable: {error}")
        except httpx.ConnectError:
            error = f"connection to {ref.host}:{ref.port} refused or impossible"
            brk.failure(time.monotonic(), error)
            return Reply(ref, False, 0, failure="transport", error=f"unreachable: {error}")
        except httpx.HTTPError as exc:
            error = f"HTTP error ({type(exc).__name__})"
            brk.failure(time.monotonic(), error)
            return Reply(ref, False, 0, failure="transport", error=f"unreachable: {error}")
        brk.success()
        # Not who asked: a memo is reused only for the very bytes it was made from (answer_memo.py).
        memo_key = (ref.id, ref.base_url, path, tuple(sorted((params or {}).items())))
        memo = self.memo.get(memo_key, body) if method == "GET" and resp.is_success else None
        if memo is not None:
            return Reply(ref, True, resp.status_code, memo.data, size=len(body), memo=memo)
        data, problem = await agent_answers.parse(body, resp.is_success)
        if problem:
            return Reply(ref, False, resp.status_code, failure="unexpected", error="answered something "
                         f"unexpected to {method} {path} ({bounded(problem, 200)})")
        if resp.is_success:
            kept = self.memo.put(memo_key, body, data) if method == "GET" else None
            return Reply(ref, True, resp.status_code, data, size=len(body), memo=kept)
        return Reply(ref, False, resp.status_code, data, failure="http",
                     error=self._error_words(resp.status_code, data))

    @staticmethod
    def _error_words(status: int, data: Any) -> str:
        detail = data.get("detail") if isinstance(data, dict) else None
        if status == 401:
            return "the agent refused the token (wrong token)"
        text = detail_words(detail) if detail is not None else ""
        if status == 404 and not text:
            return "not found"
        text = bounded(text)
        if status >= 500:
            return f"the agent failed (HTTP {status})" + (f": {text}" if text else "")
        return text or f"refused (HTTP {status})"

    async def fan_out(self, refs: Iterable[AgentRef], fn: Callable[[AgentRef], Awaitable[R]]) -> list[R]:
        """`fn` on every agent at once (each call bounded by its own deadline)."""
        return list(await asyncio.gather(*(fn(r) for r in refs)))

    # ------------------------------------------------------------ health

    async def check_all(self) -> None:
        """Re-check every agent (the typed client does: agent_client.AgentClient)."""

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
        await self.pools.close()


def transport_category(error: str) -> str:
    """A transport failure in a few words (no text of the host's)."""
    if "did not answer" in error:
        return "unreachable: it did not answer in time"
    if "refused" in error:
        return "unreachable: the connection was refused or the host cannot be reached"
    return "unreachable: the connection failed"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
