"""Polling with back-off, as data both clients follow: ask again soon while something changes,
less and less often while nothing does."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    first: float = 0.5
    factor: float = 1.5
    longest: float = 10.0
    delay: float = 0.0

    def next(self, changed: bool) -> float:
        """The pause before the next poll; back to `first` when the last poll saw a change."""
        self.delay = self.first if changed or not self.delay else min(self.longest, self.delay * self.factor)
        return self.delay
