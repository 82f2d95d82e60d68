"""How the g5k driver reaches the Grid'5000 API: one HTTP client per call with the user's login
(or the agent's own read-only account for the inventory), the names of this agent's jobs, and
what an API failure means to the API's caller or to a step.

Credentials: the user's Grid'5000 login arrives decrypted in memory (`credentials` /
`ctx.credentials`); it goes into the HTTP client's Basic auth and nowhere else — never into a
message, an event, a log line or the driver state.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from piseduce.agent.drivers.base import CredentialsRequired, DriverError, StepContext, StepError
from piseduce.agent.drivers.g5k.client import G5kAuthError, G5kClient, G5kError
from piseduce.private_files import tighten

if TYPE_CHECKING:
    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

SETTINGS_HINT = "Settings → G5k Credentials"


def hook_error(exc: G5kError, what: str) -> DriverError:
    """An API failure during a request of the agent API, as the error the API maps."""
    if isinstance(exc, G5kAuthError):
        return CredentialsRequired(exc.message)
    return DriverError(f"{what}: {exc.message}")


def step_error(exc: G5kError, what: str) -> StepError:
    if isinstance(exc, G5kAuthError):
        return StepError(f"{exc.message}: check your Grid'5000 login in {SETTINGS_HINT}")
    return StepError(f"{what}: {exc.message}")


class G5kAccess:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.site = config.g5k_site
        self.http_timeout = config.g5k_http_timeout
        self.attempts = config.g5k_api_attempts
        self.scale = config.timeout_scale
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", config.agent_name).strip("-") or "agent"
        # Every job this agent makes is named with this prefix: it tells ours from the others.
        self.job_prefix = f"piseduce-{slug}-"
        # Tests may route the HTTP client elsewhere (an ASGI transport).
        self.transport: httpx.AsyncBaseTransport | None = None

    def job_name(self, reservation_id: int) -> str:
        return f"{self.job_prefix}r{reservation_id}"

    @staticmethod
    def user_creds(credentials: Mapping[str, str] | None) -> tuple[str, str] | None:
        if not credentials:
            return None
        user, password = credentials.get("user"), credentials.get("password")
        if not user or not password:
            return None
        return str(user), str(password)

    def client(self, creds: tuple[str, str] | None) -> G5kClient:
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

    def require(self, credentials: Mapping[str, str] | None) -> tuple[str, str]:
        creds = self.user_creds(credentials)
        if creds is None:
            raise CredentialsRequired("no Grid'5000 login was forwarded with the request")
        return creds

    def service_creds(self, credentials: Mapping[str, str] | None) -> tuple[str, str] | None:
        """The caller's login, or the agent's own read-only account from the config."""
        creds = self.user_creds(credentials)
        if creds is not None:
            return creds
        user, pw_file = self.config.g5k_user, self.config.g5k_password_file
        if user and pw_file:
            try:
                path = self.config.resolve(str(pw_file))
                tighten(path)  # a password: not for every account of the machine
                password = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                log.warning("cannot read g5k_password_file %s: %s", pw_file, exc.strerror)
                return None
            if password:
                return str(user), password
        return None

    def step_creds(self, ctx: StepContext) -> tuple[str, str]:
        creds = self.user_creds(ctx.credentials)
        if creds is None:
            raise StepError(f"Grid'5000 credentials missing: set them in {SETTINGS_HINT}, then try again")
        return creds

    async def check(self, credentials: Mapping[str, str]) -> str:
        """One authenticated GET of this site (no retry: the user waits on Settings)."""
        user, password = self.require(credentials)
        client = G5kClient(
            self.config.g5k_api_url,
            self.site,
            user,
            password,
            timeout=min(self.http_timeout, 10.0),
            attempts=1,
            backoff=0.0,
            transport=self.transport,
        )
        try:
            async with client as api:
                await api.get(api.site_path)
        except G5kError as exc:
            raise hook_error(exc, "checking the Grid'5000 login") from exc
        return f"Grid'5000 accepted the login {user} (site {self.site})"
