"""Secrets of the deploy form at rest: sealed with the agent's key file, erased when the
reservation ends.

A reservation's `params` (the deploy form's values) may hold secrets, such as the OS password of a
Raspberry Pi deployment, that the executor needs later and the owner may read again on Manage.
They are stored as one Fernet token under `SEALED` (the other values stay readable: the admin
pages and the drivers use them); `unseal` gives them back in memory only, `public` drops them, and
`erase` is applied when a reservation ends or is cancelled (`models.py` does it on every status
change to a final status, so no code path can forget it).

The key: the `key_file` of the config, the one g5k and iot-lab agents share with the web UI.
Agents that do not need the web UI's key (raspberry) create their own on first use if there is
none (mode 0600).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet

from piseduce.crypto import decrypt_json, encrypt_json, key_file_fernet

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

SEALED = "_sealed"
SECRET_WORDS = ("password", "secret", "token", "credential", "private", "community")


class SealError(Exception):
    """Sealed values that this agent's key cannot open."""


def is_secret(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in SECRET_WORDS)


def agent_key(config: AgentConfig, *, create: bool) -> Fernet:
    """The agent's Fernet key; created (0600) when absent and `create` (never for agents that must
    use the web UI's copy). KeyFileError in words otherwise."""
    return key_file_fernet(config.key_path, create=create)


def seal(fernet: Fernet, params: dict[str, Any]) -> dict[str, Any]:
    """`params` with its secret values in one token (a previous token is replaced)."""
    clear = {k: v for k, v in params.items() if k != SEALED and not is_secret(k)}
    secret = {k: v for k, v in params.items() if k != SEALED and is_secret(k)}
    if secret:
        clear[SEALED] = encrypt_json(fernet, secret)
    return clear


def public(params: dict[str, Any] | None) -> dict[str, Any]:
    """What anyone allowed to see the reservation may see: no secret, sealed or not."""
    return {k: v for k, v in (params or {}).items() if k != SEALED and not is_secret(k)}


def unseal(fernet: Fernet | None, params: dict[str, Any] | None) -> dict[str, Any]:
    """The clear params, secrets included (a database written before sealing may hold them in
    clear: they are kept). SealError when the token does not open with this key."""
    params = dict(params or {})
    token = params.pop(SEALED, None)
    if token is None:
        return params
    if fernet is None:
        raise SealError("the agent has no key_file to open the deploy form's secrets")
    try:
        secret = decrypt_json(fernet, str(token))
    except ValueError:
        raise SealError(
            "the deploy form's secrets do not open with this agent's key_file: "
            "the API and the executor must use the same key file"
        ) from None
    if isinstance(secret, dict):
        params.update(secret)
    return params


def erase(params: dict[str, Any] | None) -> dict[str, Any]:
    """The params of an ended reservation: its secrets are gone for good."""
    return public(params)


def seal_stored(session: Session, fernet: Fernet) -> tuple[int, int]:
    """Upgrade a database written before sealing: secrets in clear are sealed (reservations still
    running) or erased (ended ones). Returns (sealed, erased)."""
    from sqlalchemy import select

    from piseduce.agent.lifecycle import FINAL_STATUSES
    from piseduce.agent.models import Reservation

    sealed = erased = 0
    for r in list(session.scalars(select(Reservation))):
        params = dict(r.params or {})
        if not any(is_secret(k) for k in params if k != SEALED):
            if r.status in FINAL_STATUSES and SEALED in params:
                r.params = erase(params)
                erased += 1
            continue
        if r.status in FINAL_STATUSES:
            r.params = erase(params)
            erased += 1
        else:
            try:
                r.params = seal(fernet, unseal(fernet, params))
            except SealError:
                r.params = seal(fernet, params)
            sealed += 1
    return sealed, erased
