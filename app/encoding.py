"""``/v1/predict`` bodies → model rows.

Pydantic (``app/schemas.py``) defines what a valid body is and words every
422, but building its objects for a hundred candidates costs about as much as
scoring them. So a body is read here with orjson, checked against the same
rules in one pass, and each candidate's rows come from a cache keyed by its
raw ids. A body that this pass does not accept goes to pydantic, which
rejects it with its own error; the tests hold both to the same verdict on
every kind of bad body. Ids are checked against the settings' limits once,
when they first enter the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from app.schemas import PredictRequest
from app.validation import check_categories, check_id, invalid, parse_body
from trainer.config import ModelConfig
from trainer.features import hash_id, user_row
from trainer.settings import Settings
from trainer.store.base import Click

# (item id, *category ids), as the client sent them
RowKey = tuple[str | int, ...]

CACHE_SIZE = 1 << 17  # distinct (item, categories) keys kept; about 200 bytes each
PREDICT_KEYS = frozenset({"user_id", "items", "history"})


@dataclass(frozen=True)
class Encoded:
    """One scoring request as model rows; ``-1`` marks padding."""

    user: int  # its row
    items: np.ndarray  # [n] item rows
    item_cats: np.ndarray  # [n, C] category rows
    history: np.ndarray  # [L] the newest history rows, oldest first, right-aligned
    history_cats: np.ndarray  # [L, C']


@dataclass(frozen=True)
class PredictQuery:
    """A valid ``/v1/predict`` body: its user, its candidates' keys, its history's ids (if sent)."""

    user_id: str | int
    candidates: list[RowKey]
    history: list[str | int] | None


ID_TYPES = frozenset({str, int})  # StrictStr | StrictInt: not bool, not float


def _all_ids(values: Iterable[object]) -> bool:
    return ID_TYPES.issuperset(map(type, values))


def _quick_query(body: Any) -> PredictQuery | None:
    """``body`` read by PredictRequest's rules, or None where it breaks one (or might)."""
    if type(body) is not dict or not body.keys() <= PREDICT_KEYS:
        return None
    user, items, history = body.get("user_id"), body.get("items"), body.get("history")
    if type(user) not in ID_TYPES or type(items) is not list or not items:
        return None
    if history is not None and (type(history) is not list or not _all_ids(history)):
        return None
    try:
        # a candidate is {"item_id"} or {"item_id", "categories": list}; anything else gets a None
        # in its key, which fails the type check: one comprehension, no Python-level loop body
        keys = [
            (c["item_id"], *c["categories"])
            if len(c) == 2 and type(c["categories"]) is list
            else (c["item_id"],)
            if len(c) == 1
            else (None,)
            for c in items
        ]
    except (KeyError, TypeError):  # not an object, or without item_id
        return None
    if not _all_ids(chain.from_iterable(keys)):
        return None
    return PredictQuery(user, keys, history)  # type: ignore[arg-type]


def read_predict(raw: bytes) -> PredictQuery:
    """A ``/v1/predict`` body, or the 422 that pydantic words for it."""
    try:
        query = _quick_query(orjson.loads(raw))
    except orjson.JSONDecodeError:
        query = None
    if query is None:
        body = parse_body(raw, PredictRequest)  # raises the 422 for every body the quick pass refuses...
        # ...except bodies only orjson refuses (integers over 64 bits)
        query = PredictQuery(body.user_id, [(c.item_id, *c.categories) for c in body.items], body.history)
    return query


class RequestEncoder:
    """Encodes requests for one model config.

    Each (item, categories) key the service meets is checked and hashed once:
    its rows go in a table, the key in a dict pointing at them, and a request's
    rows are one dict lookup per key and one numpy gather.
    """

    def __init__(self, config: ModelConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._clear()

    def _clear(self) -> None:
        self._slots: dict[RowKey, int] = {}
        self._table = np.full((1024, 2), -1, dtype=np.int64)  # (item row, *category rows); slot 0 is padding
        self._widths = np.ones(1024, dtype=np.int64)  # columns each slot uses
        self._size = 1

    def _add(self, key: RowKey, loc: tuple[str | int, ...], id_field: tuple[str, ...]) -> int:
        s, c = self.settings, self.config
        item = check_id(key[0], (*loc, *id_field), s.max_id_length)
        categories = check_categories(key[1:], (*loc, "categories"), s)
        rows = (
            hash_id(item, c.item_buckets, "item"),
            *(hash_id(cat, c.category_buckets, "cat") for cat in categories),
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

    def _rows(
        self, keys: Sequence[RowKey], field: str, id_field: tuple[str, ...], first: int = 0, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The keys' item rows ``[n]`` and category rows ``[n, C ≥ 1]`` (-1 padded), front-padded
        to ``length`` rows if given. A key not seen before is checked, its 422 naming ``field[first + i]``."""
        found = list(map(self._slots.get, keys))
        if None in found:
            if self._size + found.count(None) > CACHE_SIZE:  # full: start again, not mid-request
                self._clear()
                found = [None] * len(keys)
            found = [
                slot or self._add(key, (field, first + i), id_field)
                for i, (key, slot) in enumerate(zip(keys, found, strict=True))
            ]
        padding = [0] * (length - len(found)) if length is not None else []
        index = np.array(padding + found, dtype=np.intp)
        block = self._table.take(index, axis=0)[:, : max(2, int(self._widths.take(index).max(initial=0)))]
        return block[:, 0], block[:, 1:]

    def candidates(self, query: PredictQuery) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """The query's user row, and its candidates' item and category rows; 422 for ids over the limits."""
        s = self.settings
        if len(query.candidates) > s.max_items:
            raise invalid(["items"], f"at most {s.max_items} items per request", "too_long")
        user = user_row(check_id(query.user_id, ["user_id"], s.max_id_length), self.config)
        return user, self._rows(query.candidates, "items", ("item_id",))

    def client_history(self, ids: list[str | int]) -> tuple[np.ndarray, np.ndarray]:
        """A client-supplied history (item ids without categories) as history rows."""
        if len(ids) > self.settings.max_history:
            raise invalid(["history"], f"at most {self.settings.max_history} history items per request", "too_long")
        length = self.config.history_length
        newest = ids[len(ids) - length :] if length else []
        return self._rows([(h,) for h in newest], "history", (), len(ids) - len(newest), length)

    def logged_history(self, clicks: Sequence[Click]) -> tuple[np.ndarray, np.ndarray]:
        """The service's own record of a user's clicks as history rows."""
        length = self.config.history_length
        newest = clicks[len(clicks) - length :] if length else []
        return self._rows([(c.item_id, *c.categories) for c in newest], "history", ("item_id",), 0, length)
