"""The replay's encoding: a whole event table hashed to model rows once, with every
event's point-in-time history; periods are slices of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from trainer.core.config import ModelConfig
from trainer.core.features import Examples, hash_id
from trainer.research.events import EventTable
from trainer.research.history import build_histories


def hash_ids(values: np.ndarray, buckets: int, salt: str) -> np.ndarray:
    """Vectorised :func:`hash_id`: hashes each distinct value once."""
    codes, uniques = pd.factorize(values)
    rows = np.fromiter((hash_id(str(u), buckets, salt) for u in uniques), dtype=np.int64, count=len(uniques))
    return rows[codes]


def category_rows(categories: np.ndarray, buckets: int) -> np.ndarray:
    """Object array of id tuples → int64 ``[n, C]`` rows, ``-1`` padded."""
    codes, uniques = pd.factorize(categories)
    width = max((len(u) for u in uniques), default=0)
    table = np.full((len(uniques), max(width, 1)), -1, dtype=np.int64)
    for j, cats in enumerate(uniques):
        for c, cat in enumerate(cats):
            table[j, c] = hash_id(cat, buckets, "cat")
    return table[codes]


@dataclass(frozen=True)
class EncodedLog:
    """A whole time-sorted log, hashed once; periods are slices of it."""

    user: np.ndarray  # [n] int32 rows
    item: np.ndarray  # [n] int32 rows
    item_cats: np.ndarray  # [n, C] int32 rows, -1 padded
    history: np.ndarray  # [n, L] int64 event indices, -1 padded
    label: np.ndarray  # [n] float32

    def __len__(self) -> int:
        return len(self.user)

    def examples(self, start: int, stop: int) -> Examples:
        hist = self.history[start:stop]
        valid = hist >= 0
        safe = np.where(valid, hist, 0)
        hist_items = np.where(valid, self.item[safe], -1)
        hist_cats = np.where(valid[..., None], self.item_cats[safe], -1)
        return Examples(
            user=torch.from_numpy(self.user[start:stop].copy()),
            item=torch.from_numpy(self.item[start:stop].copy()),
            item_cats=torch.from_numpy(self.item_cats[start:stop].copy()),
            hist_items=torch.from_numpy(hist_items),
            hist_cats=torch.from_numpy(hist_cats),
            label=torch.from_numpy(self.label[start:stop].copy()),
        )


def encode_log(table: EventTable, config: ModelConfig) -> EncodedLog:
    """Hash ids and build every event's point-in-time history."""
    return EncodedLog(
        user=hash_ids(table.user, config.user_buckets, "user").astype(np.int32),
        item=hash_ids(table.item, config.item_buckets, "item").astype(np.int32),
        item_cats=category_rows(table.categories, config.category_buckets).astype(np.int32),
        history=build_histories(table.user.tolist(), table.timestamp, table.label, config.history_length),
        label=table.label.astype(np.float32),
    )
