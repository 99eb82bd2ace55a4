"""Ids → embedding rows, and event tables → model-ready tensors.

Ids are hashed into fixed-size tables so every model version has the same
parameter shapes (the meta generator lines coordinates up across versions)
and an id never seen before still maps to a row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from trainer.core.config import ModelConfig

# an item as the model sees it: its row and its category rows
ItemRef = tuple[int, tuple[int, ...]]


@lru_cache(maxsize=1 << 18)
def hash_id(value: str, buckets: int, salt: str) -> int:
    # cached: the service hashes the same popular ids on every request
    digest = hashlib.blake2b(value.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "little") % buckets


@dataclass(frozen=True)
class Examples:
    """A set of scored (user, item, history) rows; ``-1`` marks padding."""

    user: Tensor  # [n] int32 rows
    item: Tensor  # [n] int32
    item_cats: Tensor  # [n, C] int32
    hist_items: Tensor  # [n, L] int32
    hist_cats: Tensor  # [n, L, C] int32
    label: Tensor  # [n] float32

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def select(self, index: Tensor) -> Examples:
        # index_select, not [index]: ~4x faster on the [n, L, C] history categories
        return Examples(**{f.name: getattr(self, f.name).index_select(0, index) for f in fields(self)})

    def to_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Tensor]) -> Examples:
        return cls(**state)


def concat_examples(parts: list[Examples]) -> Examples:
    width = max(p.item_cats.shape[1] for p in parts)

    def pad(t: Tensor) -> Tensor:
        extra = width - t.shape[-1]
        return torch.nn.functional.pad(t, (0, extra), value=-1) if extra else t

    return Examples(
        user=torch.cat([p.user for p in parts]),
        item=torch.cat([p.item for p in parts]),
        item_cats=torch.cat([pad(p.item_cats) for p in parts]),
        hist_items=torch.cat([p.hist_items for p in parts]),
        hist_cats=torch.cat([pad(p.hist_cats) for p in parts]),
        label=torch.cat([p.label for p in parts]),
    )


def item_ref(item_id: str, categories: Sequence[str], config: ModelConfig) -> ItemRef:
    return (
        hash_id(item_id, config.item_buckets, "item"),
        tuple(hash_id(c, config.category_buckets, "cat") for c in categories),
    )


def item_rows(items: Sequence[ItemRef], width: int = 1) -> tuple[Tensor, Tensor]:
    """Item refs → their rows ``[n]`` and category rows ``[n, C]`` (``-1`` padded, ``C ≥ width``)."""
    n = len(items)
    width = max(width, max((len(cats) for _, cats in items), default=0))
    rows = np.fromiter((row for row, _ in items), dtype=np.int32, count=n)
    cats = np.full((n, width), -1, dtype=np.int32)
    for i, (_, item_cats) in enumerate(items):
        cats[i, : len(item_cats)] = item_cats
    return torch.from_numpy(rows), torch.from_numpy(cats)


def history_rows(histories: Sequence[Sequence[ItemRef]], length: int, width: int = 1) -> tuple[Tensor, Tensor]:
    """Histories → item rows ``[n, length]`` and category rows ``[n, length, C]``,
    each the newest ``length`` items, right-aligned and oldest first as in the
    replay, ``-1`` padded."""
    n = len(histories)
    width = max(width, max((len(cats) for h in histories for _, cats in h), default=0))
    items = np.full((n, length), -1, dtype=np.int32)
    cats = np.full((n, length, width), -1, dtype=np.int32)
    for i, history in enumerate(histories):
        recent = list(history)[-length:] if length else []
        offset = length - len(recent)
        for j, (row, item_cats) in enumerate(recent):
            items[i, offset + j] = row
            cats[i, offset + j, : len(item_cats)] = item_cats
    return torch.from_numpy(items), torch.from_numpy(cats)


def examples_from_refs(
    users: Sequence[int],
    items: Sequence[ItemRef],
    histories: Sequence[Sequence[ItemRef]],
    labels: Sequence[float],
    config: ModelConfig,
) -> Examples:
    """Rows of (user row, candidate, history) → padded tensors."""
    width = max(
        1,
        max((len(cats) for _, cats in items), default=0),
        max((len(cats) for h in histories for _, cats in h), default=0),
    )
    item, item_cats = item_rows(items, width)
    hist_items, hist_cats = history_rows(histories, config.history_length, width)
    return Examples(
        user=torch.tensor(list(users), dtype=torch.int32),
        item=item,
        item_cats=item_cats,
        hist_items=hist_items,
        hist_cats=hist_cats,
        label=torch.tensor(list(labels), dtype=torch.float32),
    )


def user_row(user_id: str, config: ModelConfig) -> int:
    return hash_id(user_id, config.user_buckets, "user")
