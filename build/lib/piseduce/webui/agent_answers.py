"""What the web UI accepts from an agent: at most so many bytes, of JSON.

An agent is a remote service: a bug, a proxy's error page or a hostile host may answer anything.
Every answer goes through here before any page sees it (`AgentHub.call`):

- `read_capped` reads the body as it streams in and stops at the cap (`agent_answer_max_bytes`,
  one per call): a 22 MB node list costs the web UI 2 MiB, not the whole of it;
- `parse` decodes it (large answers in a thread, so a big JSON document never holds the event loop)
  and refuses a document nested deeper than `MAX_DEPTH`: no answer of the protocol is more than a
  few levels deep, and a deep one (1 MB of `[[[[…`) would make the decoder, the validator, a
  template or a serialiser recurse until Python gives up (RecursionError, a 500 on every page);
- the typed agent client (`agent_client.read`) then validates a successful answer against its
  route's model of the protocol (`piseduce.protocol`: lenient about extra keys, strict about the
  types the pages use, with bounds on the texts and lists they print); anything else is "sent a
  malformed answer", in words, never a page's 500.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

# Answers larger than this are decoded and checked in a thread.
THREAD_FROM_BYTES = 128 * 1024
# The deepest nesting of lists and objects an answer may have (the protocol's deepest route,
# a reservation list with its events, is 4; free-form objects get some room below that).
MAX_DEPTH = 32


class AnswerTooLarge(Exception):
    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self.cap = cap


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels in `value` (walked with a stack
    of its own, so that the check itself cannot recurse too deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _decode(body: bytes, success: bool) -> tuple[Any, str]:
    """(the value, "") or (None, what is wrong with it). An error answer that is not JSON is
    not a problem (a proxy's error page): its HTTP status speaks for it."""
    if not body:
        return None, ""
    try:
        data = json.loads(body)
    except RecursionError:  # deeper than the decoder's own limit (about 1000 levels)
        return None, f"JSON nested more than {MAX_DEPTH} levels deep" if success else ""
    except ValueError:  # not JSON, not UTF-8, an integer of more digits than Python reads
        return None, "not JSON" if success else ""
    if isinstance(data, (dict, list)) and nested_deeper_than(data, MAX_DEPTH):
        return None, f"JSON nested more than {MAX_DEPTH} levels deep" if success else ""
    return data, ""


async def parse(body: bytes, success: bool) -> tuple[Any, str]:
    """Decode an answer (in a thread when it is large); "not JSON" for a success that is not."""
    if len(body) >= THREAD_FROM_BYTES:
        return await asyncio.to_thread(_decode, body, success)
    return _decode(body, success)


async def read_capped(resp: httpx.Response, cap: int) -> bytes:
    """The body, read as it arrives; AnswerTooLarge as soon as it passes `cap` bytes (decoded:
    a compressed answer counts by what it inflates to)."""
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise AnswerTooLarge(cap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise AnswerTooLarge(cap)
        chunks.append(chunk)
    return b"".join(chunks)
