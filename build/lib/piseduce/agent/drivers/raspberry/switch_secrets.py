"""The switches' SNMP secrets (community, v3 pass phrases), sealed at rest with the agent's key file.

They are passwords of the switches: stored as one Fernet token per switch (`switches.secrets`),
decrypted in memory only when a request is made, never shown by the API. A raspberry agent gets no
testbed credentials from the web UI, so it may have no copy of the web UI's key file: it then
makes its own (mode 0600, never overwriting one). Rows saved before the secrets were sealed keep a
clear `community` until `seal_clear_communities` (run when the driver starts) moves it in.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.agent.models import Switch
from piseduce.crypto import KeyFileError, decrypt_json, encrypt_json, key_file_fernet
from piseduce.db import write_session

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


class SecretsUnavailable(Exception):
    """The key file cannot be read or made, or a sealed secret does not decrypt with it."""


@dataclass(frozen=True)
class SwitchSecrets:
    community: str = ""
    auth_key: str = ""
    priv_key: str = ""

    def __repr__(self) -> str:  # never in a log or a traceback
        return "SwitchSecrets(***)"


class SwitchKeyring:
    """Seals and opens the secrets of switch rows with the agent's key file (loaded once)."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def fernet(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                try:
                    self._fernet = key_file_fernet(self.key_path, create=True)
                except KeyFileError as exc:
                    raise SecretsUnavailable(
                        f"the agent's key file {self.key_path} is unusable: {exc}"
                    ) from None
            return self._fernet

    def seal(self, secrets: SwitchSecrets) -> str:
        data = {"community": secrets.community, "auth_key": secrets.auth_key, "priv_key": secrets.priv_key}
        return encrypt_json(self.fernet(), data)

    def open(self, row: Switch) -> SwitchSecrets:
        if not row.secrets:
            return SwitchSecrets(community=row.community)
        try:
            data: Any = decrypt_json(self.fernet(), row.secrets)
        except ValueError:
            raise SecretsUnavailable(
                f"the SNMP secrets of switch {row.name} do not decrypt with {self.key_path}; "
                "save the switch again with its community or v3 pass phrases"
            ) from None
        if not isinstance(data, dict):
            raise SecretsUnavailable(f"the SNMP secrets of switch {row.name} are malformed")
        return SwitchSecrets(*(str(data.get(k) or "") for k in ("community", "auth_key", "priv_key")))

    def info(self, row: Switch) -> SwitchInfo:
        return SwitchInfo.from_row(row, self.open(row))

    def store(self, row: Switch, secrets: SwitchSecrets) -> None:
        row.secrets = self.seal(secrets)
        row.community = ""


def seal_clear_communities(sessions: sessionmaker[Session], keyring: SwitchKeyring) -> int:
    """Move the clear communities of rows saved before secrets were sealed into `secrets`.
    Best effort at start: a database without the table yet, or an unusable key, is logged."""
    try:
        with write_session(sessions) as s:
            rows = s.scalars(select(Switch).where(Switch.community != "", Switch.secrets == "")).all()
            for row in rows:
                keyring.store(row, SwitchSecrets(community=row.community))
            return len(rows)
    except SecretsUnavailable as exc:
        log.warning("SNMP communities left unsealed: %s", exc)
    except SQLAlchemyError as exc:
        log.debug("switch secrets not sealed yet (database not ready): %s", exc)
    return 0
