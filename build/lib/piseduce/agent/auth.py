"""Who is calling: the webui's Bearer token, the end user it names, and their testbed credentials.

The token is compared in constant time with every configured token. The webui names the end user
(`X-Piseduce-User`) and their role (`X-Piseduce-Role`); for g5k and iot-lab agents it forwards the
user's testbed credentials as a Fernet token made with the shared key file
(`X-Piseduce-Credentials`), which is decrypted in memory only, and only for drivers that need it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography.fernet import Fernet
from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from piseduce.crypto import decrypt_json
from piseduce.protocol import END_USER_RE

MAX_CREDENTIALS_TOKEN = 8192
# Documents the scheme in the OpenAPI spec; the check itself is below (401, never 403).
bearer = HTTPBearer(auto_error=False, description="One of the agent's auth_token values")


@dataclass(frozen=True)
class Caller:
    user: str
    admin: bool
    # The Fernet token as forwarded (stored on reservations of drivers that need credentials).
    credentials_token: str | None = None
    # Decrypted {"user", "password"}; None when not forwarded or not needed by the driver.
    credentials: dict[str, str] | None = None

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.user


def token_ok(given: str, tokens: list[str]) -> bool:
    ok = False
    given_b = given.encode("utf-8", "surrogateescape")
    for tok in tokens:
        # No early exit: the time does not tell which token (or how much of one) matched.
        ok |= hmac.compare_digest(given_b, tok.encode("utf-8", "surrogateescape"))
    return ok


def decrypt_credentials(fernet: Fernet | None, token: str) -> dict[str, str]:
    if fernet is None:
        raise HTTPException(400, "this agent has no key_file to read X-Piseduce-Credentials")
    if len(token) > MAX_CREDENTIALS_TOKEN:
        raise HTTPException(400, "X-Piseduce-Credentials is too long")
    try:
        data: Any = decrypt_json(fernet, token)
    except ValueError:
        raise HTTPException(
            400,
            "X-Piseduce-Credentials cannot be decrypted with this agent's key_file: "
            "the webui and the agent must share the same key file",
        ) from None
    if not (
        isinstance(data, dict) and isinstance(data.get("user"), str) and isinstance(data.get("password"), str)
    ):
        raise HTTPException(400, 'X-Piseduce-Credentials must hold {"user": ..., "password": ...}')
    return {"user": data["user"], "password": data["password"]}


def caller(
    request: Request,
    authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    x_piseduce_user: Annotated[str | None, Header(description="The end user (an e-mail address)")] = None,
    x_piseduce_role: Annotated[str | None, Header(description="user (default) or admin")] = None,
    x_piseduce_credentials: Annotated[
        str | None, Header(description="Fernet token of the user's testbed credentials (g5k, iot-lab)")
    ] = None,
) -> Caller:
    state = request.app.state.agent
    if authorization is None or not token_ok(authorization.credentials.strip(), state.config.auth_token):
        raise HTTPException(401, "missing or wrong agent token", headers={"WWW-Authenticate": "Bearer"})
    if not x_piseduce_user:
        raise HTTPException(400, "X-Piseduce-User header missing: the webui must name the end user")
    user = x_piseduce_user.strip()
    if not END_USER_RE.match(user):
        raise HTTPException(400, "X-Piseduce-User must be an e-mail address or a login name")
    role = (x_piseduce_role or "user").strip().lower()
    if role not in ("user", "admin"):
        raise HTTPException(400, "X-Piseduce-Role must be 'user' or 'admin'")
    token_c = (x_piseduce_credentials or "").strip() or None
    creds = None
    if token_c is not None and state.driver.needs_credentials:
        creds = decrypt_credentials(state.fernet, token_c)
    elif not state.driver.needs_credentials:
        token_c = None
    return Caller(user=user, admin=role == "admin", credentials_token=token_c, credentials=creds)


def admin(c: Annotated[Caller, Depends(caller)]) -> Caller:
    if not c.admin:
        raise HTTPException(403, "administrators only")
    return c


CallerDep = Annotated[Caller, Depends(caller)]
AdminDep = Annotated[Caller, Depends(admin)]
