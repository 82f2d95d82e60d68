"""The users' testbed credentials, checked against the testbed's own API (g5k and iot-lab agents):
the web UI asks when a user saves them in Settings, so that a wrong password is known at once, not
at the first deployment. The web UI never talks to a testbed itself."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from piseduce.agent.api.deps import TESTBED_NAMES, StateDep, driver_errors
from piseduce.agent.auth import CallerDep
from piseduce.agent.drivers.base import CredentialsRequired
from piseduce.protocol import CredentialsCheckOut

router = APIRouter(prefix="/api/credentials", tags=["credentials"])


@router.post("/check", response_model=CredentialsCheckOut)
async def check_credentials(state: StateDep, caller: CallerDep) -> CredentialsCheckOut:
    """Check the login and password forwarded in `X-Piseduce-Credentials` with the testbed: 200
    with `valid` true when it accepts them, false (and its reason) when it refuses them; 400 when
    none are forwarded; 409 when this agent's nodes need none (raspberry); 502 when the testbed
    cannot be asked now. Nothing is stored."""
    if not state.driver.needs_credentials:
        raise HTTPException(409, f"{state.config.node_type} agents use no testbed credentials")
    creds = caller.credentials
    if creds is None:
        raise HTTPException(400, "no credentials forwarded: send them in X-Piseduce-Credentials")
    testbed = TESTBED_NAMES.get(state.config.node_type, ("the testbed", ""))[0]
    try:
        async with driver_errors(state, f"asking {testbed}"):
            message = await state.driver.check_credentials(creds)
    except HTTPException as exc:
        if exc.status_code != 403:
            raise
        # The driver's CredentialsRequired, mapped to 403 by driver_errors: the testbed said no.
        cause = exc.__cause__
        reason = str(cause) if isinstance(cause, CredentialsRequired) else str(exc.detail)
        return CredentialsCheckOut(valid=False, testbed=testbed, user=creds["user"], message=reason)
    return CredentialsCheckOut(valid=True, testbed=testbed, user=creds["user"], message=message)
