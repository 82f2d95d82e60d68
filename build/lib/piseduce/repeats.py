"""The first item a list names twice: agents and the web UI refuse lists that must name each
thing once (nodes of a booking, reservations of a bulk action), saying which one is repeated."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

H = TypeVar("H", bound=Hashable)


def first_repeat(items: Iterable[H]) -> H | None:
    """The first item seen a second time (None: each is there once)."""
    seen: set[H] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None
