"""Capped exponential backoff with jitter, for loops that wait out a failing dependency."""

from __future__ import annotations

import random


class Backoff:
    """Delays of ``base · 2^(n-1)`` after the n-th failure in a row, capped at ``cap``, each
    drawn uniformly from its upper half so that processes that failed together spread out."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = max(cap, base)
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 62))
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0
