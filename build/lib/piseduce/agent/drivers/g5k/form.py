"""The g5k deploy form: an environment of the site (Kadeploy's list, cached) and SSH keys."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piseduce.agent.drivers.base import CredentialsRequired, FormField, InvalidParams, ReservationView
from piseduce.agent.drivers.g5k.access import G5kAccess, hook_error
from piseduce.agent.drivers.g5k.client import G5kAuthError, G5kError

if TYPE_CHECKING:
    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

ENVIRONMENT_HELP = ("A Kadeploy environment of the site: "
                    "https://www.grid5000.fr/w/Getting_Started#Deploying_nodes_with_Kadeploy")
SSH_KEY = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$"
)


class G5kForm:
    def __init__(self, config: AgentConfig, access: G5kAccess) -> None:
        self.config = config
        self.access = access
        self._envs: list[dict[str, Any]] | None = None
        self._envs_at = 0.0

    async def environments(self, credentials: Mapping[str, str] | None) -> list[dict[str, Any]]:
        fresh = (
            self._envs is not None
            and time.monotonic() - self._envs_at < self.config.inventory_refresh_seconds
        )
        if fresh and self._envs is not None:
            return self._envs
        creds = self.access.service_creds(credentials)
        if creds is None:
            if self._envs is not None:
                return self._envs
            raise CredentialsRequired("no Grid'5000 login was forwarded to list the environments")
        try:
            async with self.access.client(creds) as api:
                envs = await api.environments()
        except G5kError as exc:
            if self._envs is not None and not isinstance(exc, G5kAuthError):
                log.warning(
                    "cannot refresh the Grid'5000 environments (%s): using the last list", exc.message
                )
                return self._envs
            raise hook_error(exc, "listing the Grid'5000 environments") from exc
        self._envs, self._envs_at = envs, time.monotonic()
        return envs

    @staticmethod
    def env_names(envs: list[dict[str, Any]], arch: str) -> list[str]:
        names = {str(e["name"]) for e in envs if e.get("name") and str(e.get("arch") or arch) == arch}
        return sorted(names)

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        arch = str(reservation.node.attrs.get("arch") or "x86_64")
        names = self.env_names(await self.environments(credentials), arch)
        default = "debian12-min" if "debian12-min" in names else (names[0] if names else None)
        return [
            FormField(
                name="environment",
                label="Environment",
                kind="select",
                choices=names,
                required=True,
                default=default,
                help=ENVIRONMENT_HELP,
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
        envs = await self.environments(credentials)
        names = self.env_names(envs, arch)
        aliases = {str(e.get("alias")): str(e["name"]) for e in envs if e.get("alias") and e.get("name")}
        if env not in names:
            if env in aliases and aliases[env] in names:
                env = aliases[env]
            else:
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                site = self.access.site
                raise InvalidParams("environment", f"{env!r} is not an environment of {site} ({shown})")
        keys = params.get("ssh_keys") or []
        if isinstance(keys, str):
            keys = [k for k in keys.splitlines() if k.strip()]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidParams("ssh_keys", "must be a list of SSH public keys")
        keys = [k.strip() for k in keys if k.strip()]
        if len(keys) > 32:
            raise InvalidParams("ssh_keys", "at most 32 keys")
        for k in keys:
            if len(k) > 16384 or not SSH_KEY.match(k):
                raise InvalidParams("ssh_keys", f"not an SSH public key: {k[:40]!r}")
        return {"environment": env, "ssh_keys": keys}
