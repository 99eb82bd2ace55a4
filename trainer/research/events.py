"""The one event table every loader produces and every consumer reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


class DataError(ValueError):
    """Input data that cannot be used as given; the message says why."""


@dataclass(frozen=True)
class EventTable:
    """Interactions in time order.

    Ids are normalised to ``str`` (so the client's ``5`` and ``"5"`` are one id).
    ``categories[i]`` is the tuple of category ids of ``item[i]``.
    """

    user: np.ndarray  # object array of str
    item: np.ndarray  # object array of str
    categories: np.ndarray  # object array of tuple[str, ...]
    label: np.ndarray  # float32, 0.0 or 1.0
    timestamp: np.ndarray  # int64, seconds

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "categories", "label", "timestamp"):
            if len(getattr(self, name)) != n:
                raise DataError(f"column {name!r} has {len(getattr(self, name))} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray | slice) -> EventTable:
        return EventTable(
            user=self.user[index],
            item=self.item[index],
            categories=self.categories[index],
            label=self.label[index],
            timestamp=self.timestamp[index],
        )


def _object_array(values: list[Any]) -> np.ndarray:
    # np.asarray would turn a list of tuples into a 2-D array; this keeps one object per row
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def make_event_table(
    user: Iterable[Any],
    item: Iterable[Any],
    categories: Iterable[Iterable[Any]],
    label: Iterable[float] | np.ndarray,
    timestamp: Iterable[int] | np.ndarray,
) -> EventTable:
    """Build a time-sorted table from array-likes, normalising types.

    Sorting is stable, so events with equal timestamps keep their given order.
    """
    user_arr = _object_array([str(u) for u in user])
    item_arr = _object_array([str(i) for i in item])
    cats = _object_array([tuple(str(c) for c in cs) for cs in categories])
    label_arr = np.asarray(label, dtype=np.float32)
    if label_arr.size and not np.isin(label_arr, (0.0, 1.0)).all():
        raise DataError("labels must be 0 or 1")
    ts = np.asarray(timestamp, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    return EventTable(user_arr, item_arr, cats, label_arr, ts).take(order)


def concat(tables: list[EventTable]) -> EventTable:
    return EventTable(
        user=np.concatenate([t.user for t in tables]),
        item=np.concatenate([t.item for t in tables]),
        categories=np.concatenate([t.categories for t in tables]),
        label=np.concatenate([t.label for t in tables]),
        timestamp=np.concatenate([t.timestamp for t in tables]),
    )
