"""The last answers of agents, decoded and checked, for when an agent answers the same again.

A site's node list (and the calendar of a day) is the same bytes from one page to the next and
from one user to the next; at 6 agents x 500 nodes, decoding and checking them against the
protocol's models was a third of the Reserve page, and at 50 agents x 100 nodes the answers were
too small (under 16 KiB) and too many (100 a page, 64 kept) to be remembered at all. When an
agent's answer to the same call is byte for byte the one remembered, its decoded JSON and its
checked models are reused; any other answer is decoded afresh.

Who asked is not part of the key: an answer is reused only when its bytes are the very bytes
remembered, and the same bytes decode and check to the same values whoever asked. A call keeps
its last few distinct answers (VARIANTS): 8 users of a worker share one memo of an agent's node
list, and each keeps theirs of a calendar that marks their own slots. Per worker, in memory,
bounded in entries and in bytes; nothing to keep coherent across workers, as every answer is
compared with what it reuses.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

FROM_BYTES = 1024  # smaller answers are cheap to decode and check
MAX_BYTES = 1 << 20  # a bigger one is not kept (rare; decoded in a thread anyway)
MAX_ENTRIES = 1024  # 50 agents x a few calls (nodes, calendar of the days shown), with room
MAX_TOTAL_BYTES = 8 << 20  # of answers kept (what they decode to is some 10 times more)
VARIANTS = 8  # distinct answers kept per call (users whose calendars differ)

Key = tuple[Any, ...]


@dataclass
class Memo:
    body: bytes
    data: Any  # the decoded JSON (never changed by its readers)
    checked: dict[Any, Any] = field(default_factory=dict)  # model -> the checked value
    # What pages derive from the checked value (their own keys), kept as long as the answer is:
    # the Reserve page's sorted rows of an agent, rebuilt only when its node list changes.
    derived: dict[Any, Any] = field(default_factory=dict)


class AnswerMemo:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        # key -> its distinct answers, the most recent last; keys in least recently used order.
        self._entries: OrderedDict[Key, list[Memo]] = OrderedDict()
        self._max = max_entries
        self._max_total = max_total_bytes
        self._total = 0
        self._count = 0

    def get(self, key: Key, body: bytes) -> Memo | None:
        """The memo of `key` made from exactly `body`, if any."""
        variants = self._entries.get(key)
        if variants is None:
            return None
        for i, memo in enumerate(variants):
            if memo.body == body:
                self._entries.move_to_end(key)
                variants.append(variants.pop(i))  # the least recently used variant goes first
                return memo
        return None

    def put(self, key: Key, body: bytes, data: Any) -> Memo | None:
        if not FROM_BYTES <= len(body) <= MAX_BYTES:
            return None
        variants = self._entries.setdefault(key, [])
        self._entries.move_to_end(key)
        memo = Memo(body, data)
        variants.append(memo)
        self._total += len(body)
        self._count += 1
        if len(variants) > VARIANTS:
            self._forget(variants.pop(0))
        while self._count > self._max or self._total > self._max_total:
            oldest = next(iter(self._entries.values()))
            self._forget(oldest.pop(0))
            if not oldest:
                self._entries.popitem(last=False)
        return memo

    def _forget(self, memo: Memo) -> None:
        self._total -= len(memo.body)
        self._count -= 1

    def __len__(self) -> int:
        """How many answers are kept (every variant of every call)."""
        return self._count

    @property
    def total_bytes(self) -> int:
        return self._total
