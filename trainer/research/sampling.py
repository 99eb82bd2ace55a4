"""Negative sampling for implicit-feedback logs (docs/method.md §5).

Implicit data (Tmall, Sobazaar) logs only actions. The paper makes every
logged action a positive and pairs it with negatives drawn uniformly from the
items the user has not touched so far, at the same time, for the same user.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainer.research.events import DataError, EventTable

# Candidates are drawn from the generator in batches: one call per event
# would dominate the run time on million-event logs.
_BATCH = 4096
# Below this share of untouched items, rejection sampling wastes too many
# draws; sample from the explicit complement instead.
_DENSE_SHARE = 0.25


def add_sampled_negatives(table: EventTable, rng: np.random.Generator, per_positive: int = 1) -> EventTable:
    """Every event as a positive, each followed by ``per_positive`` sampled negatives.

    The catalogue is the set of items in ``table``. A negative for event
    ``i`` is an item its user has not touched in any event up to and
    including ``i``, distinct from the other negatives of that event; it gets
    the user and timestamp of event ``i`` and the categories the item has at
    its first appearance. Where fewer than ``per_positive`` untouched items
    remain, all of them are taken; a user who has touched every item gets
    none. Input labels are ignored: a logged action is a positive.
    """
    if per_positive < 0:
        raise DataError(f"per_positive must be non-negative, got {per_positive}")
    if len(table) > 1 and bool((np.diff(table.timestamp) < 0).any()):
        raise DataError("events must be sorted by timestamp (use make_event_table)")
    item_codes, catalogue = pd.factorize(table.item)
    user_codes, users = pd.factorize(table.user)
    n_items = len(catalogue)
    _, first_seen = np.unique(item_codes, return_index=True)
    categories_of = table.categories[first_seen]

    touched: list[set[int]] = [set() for _ in range(len(users))]
    rows: list[int] = []  # source event of each output row
    items: list[int] = []  # item code of each output row
    labels: list[float] = []
    buffer = rng.integers(n_items, size=_BATCH) if n_items else np.empty(0, dtype=np.int64)
    cursor = 0
    for i, (user, item) in enumerate(zip(user_codes.tolist(), item_codes.tolist(), strict=True)):
        seen = touched[user]
        seen.add(item)
        rows.append(i)
        items.append(item)
        labels.append(1.0)
        available = n_items - len(seen)
        want = min(per_positive, available)
        if want == 0:
            continue
        if available >= _DENSE_SHARE * n_items and want <= available // 2:
            picks: list[int] = []
            while len(picks) < want:
                if cursor == _BATCH:
                    buffer, cursor = rng.integers(n_items, size=_BATCH), 0
                candidate = int(buffer[cursor])
                cursor += 1
                if candidate not in seen and candidate not in picks:
                    picks.append(candidate)
        else:
            pool = np.setdiff1d(np.arange(n_items), np.fromiter(seen, dtype=np.int64, count=len(seen)))
            picks = rng.choice(pool, size=want, replace=False).tolist()
        rows.extend([i] * want)
        items.extend(picks)
        labels.extend([0.0] * want)

    source = np.asarray(rows, dtype=np.int64)
    chosen = np.asarray(items, dtype=np.int64)
    return EventTable(
        user=table.user[source],
        item=np.asarray(catalogue, dtype=object)[chosen],
        categories=categories_of[chosen],
        label=np.asarray(labels, dtype=np.float32),
        timestamp=table.timestamp[source],
    )
