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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import orjson

from app.schemas import PredictRequest
from app.validation import check_categories, check_id, invalid, parse_body
from trainer.config import ModelConfig
from trainer.features import hash_id, user_row
from trainer.settings import Settings
from trainer.store.base import Click

# (item id, *category ids), as the client sent them → (item row, *category rows)
RowKey = tuple[str | int, ...]
Rows = tuple[int, ...]

CACHE_SIZE = 1 << 17  # distinct (item, categories) keys kept; about 200 bytes each
PREDICT_KEYS = frozenset({"user_id", "items", "history"})
CANDIDATE_KEYS = frozenset({"item_id", "categories"})


@dataclass(frozen=True)
class Encoded:
    """One scoring request as model rows; ``-1`` marks padding."""

    user: int
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


def _is_id(value: object) -> TypeGuard[str | int]:
    # StrictStr | StrictInt: not bool, not float
    return type(value) is str or type(value) is int


def _quick_query(body: Any) -> PredictQuery | None:
    """``body`` read by PredictRequest's rules, or None where it breaks one (or might)."""
    if type(body) is not dict or not body.keys() <= PREDICT_KEYS:
        return None
    user, items, history = body.get("user_id"), body.get("items"), body.get("history")
    if not _is_id(user) or type(items) is not list or not items:
        return None
    if history is not None and (type(history) is not list or not all(map(_is_id, history))):
        return None
    keys: list[RowKey] = []
    for candidate in items:
        if type(candidate) is not dict or not candidate.keys() <= CANDIDATE_KEYS:
            return None
        item = candidate.get("item_id")
        if not _is_id(item):
            return None
        if "categories" in candidate:
            categories = candidate["categories"]
            if type(categories) is not list or not all(map(_is_id, categories)):
                return None
            keys.append((item, *categories))
        else:
            keys.append((item,))
    return PredictQuery(user, keys, history)


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


def _padded(rows: Sequence[Rows]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (item, *categories) → item rows ``[n]`` and category rows ``[n, C ≥ 1]``, -1 padded."""
    width = max(2, max(map(len, rows), default=0))
    if any(len(r) != width for r in rows):
        rows = [r + (-1,) * (width - len(r)) for r in rows]
    table = np.array(rows, dtype=np.int64).reshape(len(rows), width)
    return table[:, 0], table[:, 1:]


class RequestEncoder:
    """Encodes requests for one model config, caching each (item, categories) key's rows."""

    def __init__(self, config: ModelConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._rows: dict[RowKey, Rows] = {}

    def _new_rows(self, key: RowKey, loc: tuple[str | int, ...], id_field: tuple[str, ...]) -> Rows:
        s, c = self.settings, self.config
        item = check_id(key[0], (*loc, *id_field), s.max_id_length)
        categories = check_categories(list(key[1:]), (*loc, "categories"), s)
        rows = (
            hash_id(item, c.item_buckets, "item"),
            *(hash_id(cat, c.category_buckets, "cat") for cat in categories),
        )
        if len(self._rows) >= CACHE_SIZE:
            self._rows.clear()
        self._rows[key] = rows
        return rows

    def _lookup(self, keys: Sequence[RowKey], field: str, id_field: tuple[str, ...], first: int = 0) -> list[Rows]:
        """Each key's rows; a key not in the cache is checked, its 422 naming ``field[first + i]``."""
        rows = [self._rows.get(key) for key in keys]
        if None in rows:
            rows = [
                r or self._new_rows(k, (field, first + i), id_field)
                for i, (k, r) in enumerate(zip(keys, rows, strict=True))
            ]
        return rows  # type: ignore[return-value]

    def candidates(self, query: PredictQuery) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """The query's user row, and its candidates' item and category rows; 422 for ids over the limits."""
        s = self.settings
        if len(query.candidates) > s.max_items:
            raise invalid(["items"], f"at most {s.max_items} items per request", "too_long")
        user = user_row(check_id(query.user_id, ["user_id"], s.max_id_length), self.config)
        return user, _padded(self._lookup(query.candidates, "items", ("item_id",)))

    def client_history(self, ids: list[str | int]) -> list[Rows]:
        """A client-supplied history: item ids without categories."""
        if len(ids) > self.settings.max_history:
            raise invalid(["history"], f"at most {self.settings.max_history} history items per request", "too_long")
        newest = ids[len(ids) - self.config.history_length :] if self.config.history_length else []
        return self._lookup([(h,) for h in newest], "history", (), first=len(ids) - len(newest))

    def logged_history(self, clicks: Sequence[Click]) -> list[Rows]:
        """The service's own record of a user's clicks."""
        return self._lookup([(c.item_id, *c.categories) for c in clicks], "history", ("item_id",))

    def encode(self, user: int, candidates: tuple[np.ndarray, np.ndarray], history: Sequence[Rows]) -> Encoded:
        length = self.config.history_length
        recent = history[len(history) - length :] if length else []
        hist_items = np.full(length, -1, dtype=np.int64)
        items, cats = _padded(recent)
        hist_cats = np.full((length, cats.shape[1]), -1, dtype=np.int64)
        if recent:
            hist_items[length - len(recent) :] = items
            hist_cats[length - len(recent) :] = cats
        return Encoded(user, candidates[0], candidates[1], hist_items, hist_cats)
