"""Environment factory rules shared by the API (checks before queuing) and the driver (checks again
before writing): what a user's environment may be called and where its image goes.

Environment names are one namespace per agent (the name is the image's file name), but a user
must not learn the names of other users' private environments: a name held by something the
caller cannot see (another user's environment or registration, a stray file in env_path) is
refused with one sentence for all of them, `unavailable`, which tells nothing of what holds it."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.agent.models import ACTION_OPEN, Action, Environment, Reservation
from piseduce.private_files import world_writable

PROCESS = "register_env"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IMAGE_SUFFIX = ".img.gz"


def check_name(name: object) -> str:
    """The name, or ValueError with the rule it breaks."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            "an environment name is 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or a digit"
        )
    return name


def image_file(name: str) -> str:
    """The image's file name inside env_path (the name is checked: no separator can appear)."""
    return check_name(name) + IMAGE_SUFFIX


def unsafe_env_dir(env_dir: Path) -> str | None:
    """Why a user's card must not be saved into env_path now (None: it may). In a folder every
    account may write to, another account could replace a saved image or link its name elsewhere."""
    if world_writable(env_dir):
        return (f"env_path {env_dir} is writable by every account, who could replace a saved image: "
                f"the agent's administrator must make it writable by the agent only (chmod o-w {env_dir})")
    return None


def unavailable(name: str) -> str:
    """The refusal of a name held by something the caller may not see."""
    return f"the name {name} is not available on this agent; choose another one"


def name_taken(
    s: Session, env_dir: Path, name: str, owner: str, *, except_action: int | None = None
) -> str | None:
    """Why `owner` cannot use `name` now, in words that reveal only what `owner` may see: a public
    environment, or their own environment or registration."""
    row = s.get(Environment, name)
    if row is not None:
        if row.owner == "":
            return f"a public environment named {name} already exists"
        return f"your environment {name} already exists" if row.owner == owner else unavailable(name)
    if (env_dir / image_file(name)).exists():
        return unavailable(name)
    pending = s.execute(
        select(Action.id, Action.args, Reservation.owner)
        .join(Reservation, Reservation.id == Action.reservation_id, isouter=True)
        .where(Action.process == PROCESS, Action.status.in_(ACTION_OPEN))
    )
    for action_id, args, action_owner in pending:
        if action_id != except_action and (args or {}).get("name") == name:
            return f"you are already saving an environment named {name}" if action_owner == owner \
                else unavailable(name)
    return None
