"""The last big answers of agents, decoded and checked, for when an agent answers the same again.

A site's node list (and the calendar of a day) is the same bytes from one page to the next; at
6 agents x 500 nodes, decoding and checking them against the protocol's models was a third of the
Reserve page. When an agent's answer to the same call for the same user is byte for byte the one
remembered, its decoded JSON and its checked models are reused; any other answer is decoded
afresh. Per worker, in memory, bounded in entries and in bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

FROM_BYTES = 16 * 1024  # smaller answers are cheap to decode
MAX_BYTES = 1 << 20  # a bigger one is not kept (rare; decoded in a thread anyway)
MAX_ENTRIES = 64

Key = tuple[Any, ...]


@dataclass
class Memo:
    body: bytes
    data: Any  # the decoded JSON (never changed by its readers)
    checked: dict[Any, Any] = field(default_factory=dict)  # model -> the checked value


class AnswerMemo:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[Key, Memo] = OrderedDict()
        self._max = max_entries

    def get(self, key: Key, body: bytes) -> Memo | None:
        """The memo of `key` if it was made from exactly `body`."""
        memo = self._entries.get(key)
        if memo is None or memo.body != body:
            return None
        self._entries.move_to_end(key)
        return memo

    def put(self, key: Key, body: bytes, data: Any) -> Memo | None:
        if not FROM_BYTES <= len(body) <= MAX_BYTES:
            return None
        memo = self._entries[key] = Memo(body, data)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return memo
