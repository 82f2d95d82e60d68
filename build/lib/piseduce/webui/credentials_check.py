"""Is a user's Grid'5000 or IoT-LAB login right? The web UI never talks to a testbed itself: it
asks the agents that act with that testbed's logins (their /api/info `credentials`) to check it
with the testbed's API, all at once, and takes the first definite answer.

Settings refuses to save credentials the testbed refused (the user expects a wrong password to be
caught now, not at the first deployment) and saves, with a warning, those no agent could check
(no agent of that type yet, agents or testbed unreachable): they are checked again at each use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agents import Identity

LABELS = {"g5k": "Grid'5000", "iotlab": "IoT-LAB"}
# Asking a testbed takes longer than the agents' own answers: the user waits on a Save click.
CHECK_TIMEOUT = 12.0


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["valid", "refused", "unchecked"]
    message: str  # in words: "Grid'5000 accepted the login demo (checked through g5k-nancy)"


async def check_credentials(
    h: AgentClient, email: str, role: str, kind: str, login: str, password: str
) -> Verdict:
    """`kind`: the credential kind (protocol.CredentialKind) of the testbed, g5k or iotlab."""
    label = LABELS.get(kind, kind)
    refs = [r for r in await h.refs() if r.about.credentials == kind]
    if not refs:
        return Verdict("unchecked", f"not checked: no {label} agent is registered in this web UI yet")
    who = Identity(email=email, role=role, credentials={kind: {"user": login, "password": password}})
    replies = await h.fan_out(refs, lambda r: h.check_credentials(r, who, CHECK_TIMEOUT))
    answered = [(r.agent, r.value) for r in replies if r.value is not None]
    valid = [agent.name for agent, check in answered if check.valid]
    if valid:
        return Verdict("valid", f"{label} accepted the login {login} (checked through {', '.join(valid)})")
    if answered:
        agent, check = answered[0]
        reason = check.message.strip()
        # The agent's reason names the testbed already ("Grid'5000 refused the login 'demo'").
        if not reason.lower().startswith(label.lower()):
            reason = f"{label} refused the login {login}" + (f": {reason}" if reason else "")
        return Verdict("refused", f"{reason} (checked through {agent.name})")
    why = "; ".join(r.words for r in replies)
    return Verdict("unchecked", f"not checked: no {label} agent could ask {label} now ({why})")
