"""Point-in-time user histories for the replay, which has a whole log and no store.

A user's history for an event is the item refs of their most recent positives
logged strictly before that event's timestamp. The event itself, anything
later, and anything at the same instant are never included. (The service takes
its histories from the store's click lists instead; on a log with distinct
timestamps the two agree, which tests/test_online_features.py checks.)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np

Ref = TypeVar("Ref")


class HistoryBuilder(Generic[Ref]):
    """Per-user recent positives, fed in time order.

    Holds per user the last ``length`` positives plus any that share the newest
    timestamp, so a query at that timestamp still finds ``length`` earlier ones.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self._clicks: dict[Hashable, list[tuple[int, Ref]]] = {}

    def history(self, user: Hashable, timestamp: int) -> list[Ref]:
        """Refs of the user's latest positives before ``timestamp``, oldest first."""
        clicks = self._clicks.get(user, ())
        end = len(clicks)
        while end and clicks[end - 1][0] >= timestamp:
            end -= 1
        start = max(0, end - self.length)
        return [ref for _, ref in clicks[start:end]]

    def add(self, user: Hashable, timestamp: int, ref: Ref) -> None:
        """Record a positive. Timestamps per user must not go backwards."""
        clicks = self._clicks.setdefault(user, [])
        if clicks and timestamp < clicks[-1][0]:
            raise ValueError("positives must be added in time order")
        clicks.append((timestamp, ref))
        keep = self._visible_count(clicks)
        if len(clicks) > 2 * keep:
            # trim in bulk so the amortised cost per add stays O(1)
            del clicks[: len(clicks) - keep]

    def _visible_count(self, clicks: list[tuple[int, Ref]]) -> int:
        """How many of the newest clicks a query can still see: ``length`` and any sharing the newest timestamp."""
        newest = clicks[-1][0]
        same = 1
        while same < len(clicks) and clicks[-same - 1][0] == newest:
            same += 1
        return same + self.length


def build_histories(users: Sequence[Hashable], timestamps: np.ndarray, labels: np.ndarray, length: int) -> np.ndarray:
    """For time-sorted events, the indices of each event's history events.

    Returns an int64 array ``[n, length]``, oldest first, right-aligned, ``-1``
    where a user has fewer earlier positives.
    """
    builder: HistoryBuilder[int] = HistoryBuilder(length)
    out = np.full((len(users), length), -1, dtype=np.int64)
    if length == 0:
        return out
    ts = timestamps.tolist()
    positive = (labels > 0.5).tolist()
    for i, user in enumerate(users):
        refs = builder.history(user, ts[i])
        if refs:
            out[i, length - len(refs) :] = refs
        if positive[i]:
            builder.add(user, ts[i], i)
    return out
