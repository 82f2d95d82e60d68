"""Environment factory rules shared by the API (checks before queuing) and the driver (checks again
before writing): what a user's environment may be called and where its image goes."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.agent.models import ACTION_OPEN, Action, Environment

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


def name_taken(s: Session, env_dir: Path, name: str, *, except_action: int | None = None) -> str | None:
    """Why `name` cannot be used now (an environment, a file, or another registration has it)."""
    if s.get(Environment, name) is not None:
        return f"an environment named {name} already exists"
    if (env_dir / image_file(name)).exists():
        return f"env_path already holds a file {image_file(name)}"
    pending = s.scalars(
        select(Action).where(Action.process == PROCESS, Action.status.in_(ACTION_OPEN))
    )
    for action in pending:
        if action.id != except_action and (action.args or {}).get("name") == name:
            return f"an environment named {name} is being registered"
    return None
