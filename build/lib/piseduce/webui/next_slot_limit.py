"""The next-slot question's rate limit: each question asks every matching agent for a sweep of its
calendar (up to 48 rounds for a count), so a few clients asking in a loop slowed every page of
the web UI down. Each user gets a burst of `free` questions, then one more every `leak_seconds`;
beyond that the answer is 429 with Retry-After. The counting is the login limiter's
(webui/throttle.py: rows of the web UI database, so every web UI worker shares one count), with
each question counted and never forgiven."""

from __future__ import annotations

from fastapi import HTTPException, Request

from piseduce.dbtypes import utcnow
from piseduce.webui.database import Database
from piseduce.webui.throttle import Key, Limiter, Refusal

RULE = "next-slot"


async def refusal(request: Request, user_id: int) -> Refusal | None:
    """Count this question of `user_id`; the refusal when they must wait first (not counted)."""
    limiter: Limiter = request.app.state.limiter
    db: Database = request.app.state.database
    key, now = Key(RULE, str(user_id)), utcnow()
    return await db.write(lambda s: limiter.attempt(s, [key], now))


async def check(request: Request, user_id: int) -> None:
    """`refusal` as the users' API says it: HTTPException 429 with Retry-After."""
    refused = await refusal(request, user_id)
    if refused is not None:
        raise HTTPException(429, refused.message, headers={"Retry-After": refused.retry_after})
