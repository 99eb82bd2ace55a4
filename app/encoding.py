"""``/v1/predict`` bodies → model rows, through a cache of the candidates met before.

A body arrives decoded and checked (``app/decoding.py``): its candidates are
frozen :class:`~app.schemas.Candidate` structs, each the key of its rows here.
A candidate (or bare history id) is hashed once, when it first enters the
cache; a request's rows are then one dict lookup per key and one numpy gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.schemas import Candidate, PredictRequest
from trainer.core.config import ModelConfig
from trainer.core.features import hash_id, user_row
from trainer.core.store.base import Click

CACHE_SIZE = 1 << 17  # distinct cache keys kept; about 200 bytes each

# a candidate, or a bare item id: a history the client sent, without categories
RowKey = Candidate | str | int
Rows = tuple[np.ndarray, np.ndarray]  # item rows [n] and their category rows [n, C ≥ 1], -1 padded


@dataclass(frozen=True)
class Encoded:
    """One scoring request as model rows; ``-1`` marks padding."""

    user: int  # its row
    items: np.ndarray  # [n] item rows
    item_cats: np.ndarray  # [n, C] category rows
    history: np.ndarray  # [L] the newest history rows, oldest first, right-aligned
    history_cats: np.ndarray  # [L, C']


class RequestEncoder:
    """Encodes requests for one model config.

    Each candidate (or bare history id) the service meets is hashed once: its rows go in a
    table, the key in a dict pointing at them.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._clear()

    def _clear(self) -> None:
        self._slots: dict[RowKey, int] = {}
        self._table = np.full((1024, 2), -1, dtype=np.int64)  # (item row, *category rows); slot 0 is padding
        self._widths = np.ones(1024, dtype=np.int64)  # columns each slot uses
        self._size = 1

    def _add(self, key: RowKey) -> int:
        c = self.config
        item_id, categories = (key.item_id, key.categories) if isinstance(key, Candidate) else (key, ())
        rows = (
            hash_id(str(item_id), c.item_buckets, "item"),
            *(hash_id(str(category), c.category_buckets, "cat") for category in categories),
        )
        capacity, width = self._table.shape
        if self._size == capacity or len(rows) > width:
            grown = np.full((capacity * (2 if self._size == capacity else 1), max(width, len(rows))), -1, np.int64)
            grown[:capacity, :width] = self._table
            self._table = grown
            self._widths = np.concatenate([self._widths, np.ones(len(grown) - capacity, np.int64)])
        slot = self._size
        self._table[slot, : len(rows)] = rows
        self._widths[slot] = len(rows)
        self._slots[key] = slot
        self._size += 1
        return slot

    def _rows(self, keys: Sequence[RowKey], length: int | None = None) -> Rows:
        """The keys' item and category rows, front-padded to ``length`` rows if given."""
        found = list(map(self._slots.get, keys))
        if None in found:
            if self._size + found.count(None) > CACHE_SIZE:  # full: start again, not mid-request
                self._clear()
                found = [None] * len(keys)
            found = [slot or self._add(key) for key, slot in zip(keys, found, strict=True)]
        padding = [0] * (length - len(found)) if length is not None else []
        index = np.array(padding + found, dtype=np.intp)
        block = self._table.take(index, axis=0)[:, : max(2, int(self._widths.take(index).max(initial=0)))]
        return block[:, 0], block[:, 1:]

    def candidates(self, body: PredictRequest) -> tuple[int, Rows]:
        """The body's user row, and its candidates' item and category rows."""
        return user_row(str(body.user_id), self.config), self._rows(body.items)

    def client_history(self, ids: Sequence[str | int]) -> Rows:
        """A client-supplied history (item ids without categories) as history rows: its newest
        ``history_length`` ids, which are all the model uses."""
        length = self.config.history_length
        newest = ids[len(ids) - length :] if length else []
        return self._rows(newest, length)

    def logged_history(self, clicks: Sequence[Click]) -> Rows:
        """The service's own record of a user's clicks as history rows."""
        length = self.config.history_length
        newest = clicks[len(clicks) - length :] if length else []
        return self._rows([Candidate(c.item_id, tuple(c.categories)) for c in newest], length)
