"""/api/v1 me, ssh-keys and credentials: the caller's account, as Settings shows it.

Testbed passwords are write-only: a GET says whether they are set and the login, never the
password. A new login is checked with the testbed (through an agent of that kind) before it is
saved, as Settings does.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response

from piseduce import crypto
from piseduce.api_models import CredentialsOut, MeOut, SshKeyOut
from piseduce.sshkeys import parse_keys
from piseduce.webui import audit
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.api.auth import Caller, caller, writer
from piseduce.webui.api.schemas import CredentialsIn, SshKeysIn
from piseduce.webui.credentials_check import check_credentials
from piseduce.webui.routes.settings import (
    CRED_TYPES,
    drop_key,
    key_list,
    merge_keys,
    save_credentials,
)
from piseduce.webui.web import browser_zone, database

router = APIRouter(tags=["account"])
Kind = Literal["g5k", "iotlab"]


@router.get("/me", response_model=MeOut)
async def me(request: Request, who: Caller = Depends(caller)) -> MeOut:
    """Who the token (or the session) speaks for."""
    zone = (
        browser_zone(request).key
        if (request.headers.get("x-timezone") or request.cookies.get("tz"))
        else None
    )
    return MeOut(
        email=who.user.email,
        role="admin" if who.is_admin else "user",
        zone=zone,
        via=who.via,
        scope="write" if who.can_write else "read",
    )


@router.get("/ssh-keys", response_model=list[SshKeyOut])
async def ssh_keys(who: Caller = Depends(caller)) -> list[SshKeyOut]:
    """The account's SSH public keys (installed on the nodes it deploys)."""
    return [SshKeyOut(**k) for k in key_list(who.user)]


@router.post("/ssh-keys", status_code=201, response_model=list[SshKeyOut])
async def add_ssh_keys(body: SshKeysIn, request: Request, who: Caller = Depends(writer)) -> list[SshKeyOut]:
    """Add OpenSSH public keys (one per line); the ones the account has already are kept once."""
    try:
        keys = parse_keys(body.keys)
    except ValueError as exc:
        raise HTTPException(422, f"keys: {exc}") from None
    uid = who.user.id
    db = database(request)
    actor = audit.who(request, who.user)
    added = await db.write(audit.then(lambda s: merge_keys(s, uid, keys), actor, "ssh_key.add",
                                      audit.keys_added(uid)))
    if isinstance(added, str):
        raise HTTPException(422, added)
    user = await db.read(lambda s: s.get(type(who.user), uid))
    return [SshKeyOut(**k) for k in key_list(user)] if user is not None else []


@router.delete("/ssh-keys/{fingerprint:path}", status_code=204)
async def delete_ssh_key(
    fingerprint: Annotated[str, Path(min_length=1, max_length=100)],
    request: Request,
    who: Caller = Depends(writer),
) -> Response:
    """Delete the key of this fingerprint (SHA256:…, as listed)."""
    uid = who.user.id
    removal = audit.then(lambda s: drop_key(s, uid, fingerprint), audit.who(request, who.user),
                         "ssh_key.remove", audit.key_removed(uid, fingerprint))
    if not await database(request).write(removal):
        raise HTTPException(404, f"No key of fingerprint {fingerprint[:80]!r} in this account.")
    return Response(status_code=204)


def _credentials(who: Caller, kind: str) -> CredentialsOut:
    _label, user_attr, pwd_attr = CRED_TYPES[kind]
    login = str(getattr(who.user, user_attr) or "")
    return CredentialsOut(kind=kind, set=bool(login and getattr(who.user, pwd_attr)), login=login)  # type: ignore[arg-type]


@router.get("/credentials", response_model=list[CredentialsOut])
async def credentials(who: Caller = Depends(caller)) -> list[CredentialsOut]:
    """Whether the Grid'5000 and IoT-LAB logins are set (never the passwords)."""
    return [_credentials(who, k) for k in CRED_TYPES]


@router.get("/credentials/{kind}", response_model=CredentialsOut)
async def credentials_of(kind: Kind, who: Caller = Depends(caller)) -> CredentialsOut:
    return _credentials(who, kind)


@router.put("/credentials/{kind}", response_model=CredentialsOut)
async def set_credentials(
    kind: Kind,
    body: CredentialsIn,
    request: Request,
    who: Caller = Depends(writer),
    h: AgentClient = Depends(agents),
) -> CredentialsOut:
    """Check the login with the testbed, then save it encrypted; 422 when the testbed refuses it
    (nothing saved). Saved unchecked, with `set` true, when no agent of that kind can ask."""
    label = CRED_TYPES[kind][0]
    verdict = await check_credentials(h, who.user.email, who.user.role, kind, body.login, body.password)
    if verdict.outcome == "refused":
        raise HTTPException(
            422, f"{label}: {verdict.message}: nothing was saved. Check the login and password."
        )
    sealed = crypto.encrypt_str(request.app.state.fernet, body.password)
    uid = who.user.id
    saving = audit.then(lambda s: save_credentials(s, uid, kind, body.login, sealed),
                        audit.who(request, who.user), "credentials.set",
                        audit.credentials_of(uid, kind, body.login))
    if not await database(request).write(saving):
        raise HTTPException(401, "The account no longer exists.")
    return CredentialsOut(kind=kind, set=True, login=body.login)


@router.delete("/credentials/{kind}", status_code=204)
async def delete_credentials(kind: Kind, request: Request, who: Caller = Depends(writer)) -> Response:
    uid = who.user.id
    await database(request).write(audit.then(lambda s: save_credentials(s, uid, kind, "", None),
                                             audit.who(request, who.user), "credentials.delete",
                                             audit.credentials_of(uid, kind, "")))
    return Response(status_code=204)
