"""Which environment a deploy form preselects: the operator's choice, never a user's image.

The first environment by name used to win, so a user's private image named "aaa" became the
preselected system of every new board. Now: the environment an administrator made the default
(public and available), else the newest public available one, else none (the user chooses).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from piseduce.agent.models import Environment

_OLDEST = dt.datetime.min.replace(tzinfo=dt.UTC)


def is_public(env: Environment) -> bool:
    return not env.owner and env.state == "available"


def default_environment(envs: Sequence[Environment]) -> Environment | None:
    public = [e for e in envs if is_public(e)]
    for env in public:
        if env.is_default:
            return env
    if not public:
        return None
    # Rows older than the created_at column have none: they count as the oldest.
    return max(public, key=lambda e: (e.created_at or _OLDEST, e.name))
