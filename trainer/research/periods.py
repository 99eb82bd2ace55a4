"""Cutting a time-ordered event log into the periods models are updated on.

Two ways, as in the paper (docs/method.md §5): equal-count slices of the sorted log
(Sobazaar, MovieLens) and fixed-length calendar periods such as days (Tmall).
Slices are views of the input, so splitting copies nothing.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from trainer.research.events import DataError, EventTable


def _require_time_order(table: EventTable) -> None:
    # Both splits assume sorted timestamps; an unsorted table would be cut
    # into periods that silently overlap in time.
    if len(table) > 1 and bool((np.diff(table.timestamp) < 0).any()):
        raise DataError("events must be sorted by timestamp (use make_event_table)")


def equal_count_bounds(n_rows: int, n_periods: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``n_periods`` consecutive slices whose sizes differ
    by at most one; the first ``n_rows % n_periods`` hold the extra row."""
    if n_periods < 1:
        raise DataError(f"n_periods must be at least 1, got {n_periods}")
    if n_periods > n_rows:
        raise DataError(f"cannot cut {n_rows} events into {n_periods} non-empty periods")
    base, extra = divmod(n_rows, n_periods)
    sizes = np.full(n_periods, base, dtype=np.int64)
    sizes[:extra] += 1
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    return [(int(a), int(b)) for a, b in pairwise(bounds)]


def split_equal_count(table: EventTable, n_periods: int) -> list[EventTable]:
    """The table cut at :func:`equal_count_bounds`. Events that share a
    timestamp may fall on both sides of a boundary."""
    bounds = equal_count_bounds(len(table), n_periods)
    _require_time_order(table)
    return [table.take(slice(a, b)) for a, b in bounds]


def period_index(timestamp: int, period_seconds: int, origin: int) -> int:
    """Index of the period holding ``timestamp``; negative before ``origin``."""
    if period_seconds < 1:
        raise DataError(f"period_seconds must be at least 1, got {period_seconds}")
    return (int(timestamp) - int(origin)) // int(period_seconds)


def split_by_time(table: EventTable, period_seconds: int, origin: int | None = None) -> list[EventTable]:
    """Consecutive periods ``[origin + k·period_seconds, origin + (k+1)·period_seconds)``.

    ``origin`` defaults to the first timestamp floored to a multiple of
    ``period_seconds`` since the Unix epoch, so days run from UTC midnight.
    Periods with no events in between are kept (as empty tables), so list
    position equals :func:`period_index`. The list ends with the last
    non-empty period; an empty table gives an empty list.
    """
    if period_seconds < 1:
        raise DataError(f"period_seconds must be at least 1, got {period_seconds}")
    _require_time_order(table)
    if len(table) == 0:
        return []
    first, last = int(table.timestamp[0]), int(table.timestamp[-1])
    if origin is None:
        origin = first - first % period_seconds
    if first < origin:
        raise DataError(f"first event at {first} is before the origin {origin}")
    n_periods = period_index(last, period_seconds, origin) + 1
    starts = origin + period_seconds * np.arange(1, n_periods, dtype=np.int64)
    cuts = np.searchsorted(table.timestamp, starts, side="left")
    bounds = np.concatenate(([0], cuts, [len(table)]))
    return [table.take(slice(int(a), int(b))) for a, b in pairwise(bounds)]
