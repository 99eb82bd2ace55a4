"""``/v1/predict`` bodies → model rows.

Pydantic (``app/schemas.py``) defines what a valid body is and words every
422, but building its objects for a hundred candidates costs about as much as
scoring them. So a body is decoded here by msgspec into frozen structs under
the same rules (strict id types, no unknown keys), in C, and each candidate
struct is itself the key of a cache holding its rows. A body that this decode
does not accept goes to pydantic, which rejects it with its own error; the
tests hold both to the same verdict on every kind of bad body (integer ids
outside 64 bits included: msgspec.Meta carries the schema's bounds). Ids are
checked against the settings' limits once, when they first enter the cache;
the ids of a client's history that the model does not use, in one msgspec
conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np

from app.schemas import INT64_MAX, INT64_MIN, IdRules, PredictRequest
from app.validation import check_categories, check_id, invalid, parse_body
from trainer.core.config import ModelConfig
from trainer.core.features import hash_id, user_row
from trainer.core.settings import Settings
from trainer.core.store.base import Click

CACHE_SIZE = 1 << 17  # distinct cache keys kept; about 200 bytes each

# app.schemas.Id: a string, or an integer within 64 bits (msgspec never takes one for the other)
Id = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)] | str


class Candidate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A candidate as the client sent it, and its key in the row cache."""

    item_id: Id
    categories: tuple[Id, ...] = ()


class _PredictBody(msgspec.Struct, forbid_unknown_fields=True):
    user_id: Id
    items: Annotated[list[Candidate], msgspec.Meta(min_length=1)]
    history: list[Id] | None = None


_decode_predict = msgspec.json.Decoder(_PredictBody).decode

# a candidate, or a bare item id: a history the client sent, without categories
RowKey = Candidate | str | int


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
    """A valid ``/v1/predict`` body: its user, its candidates, its history's ids (if sent)."""

    user_id: str | int
    candidates: list[Candidate]
    history: list[str | int] | None


def _quick_query(raw: bytes) -> PredictQuery | None:
    """``raw`` read by PredictRequest's rules, or None where it breaks one (or might)."""
    try:
        body = _decode_predict(raw)
    except msgspec.DecodeError:  # malformed, or against the schema (ValidationError is one)
        return None
    return PredictQuery(body.user_id, body.items, body.history)


def read_predict(raw: bytes) -> PredictQuery:
    """A ``/v1/predict`` body, or the 422 that pydantic words for it."""
    query = _quick_query(raw)
    if query is None:
        body = parse_body(raw, PredictRequest)  # raises the 422 for every body the quick read refuses
        candidates = [Candidate(c.item_id, tuple(c.categories)) for c in body.items]
        query = PredictQuery(body.user_id, candidates, body.history)
    return query


class RequestEncoder:
    """Encodes requests for one model config.

    Each candidate (or bare history id) the service meets is checked and hashed once:
    its rows go in a table, the key in a dict pointing at them, and a request's
    rows are one dict lookup per key and one numpy gather.
    """

    def __init__(self, config: ModelConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        # the settings' bounds on an id (app.schemas.IdRules), for the history ids the model does not use
        low, high = IdRules(settings.max_id_length).int_range()
        bounded = Annotated[str, msgspec.Meta(min_length=1, max_length=settings.max_id_length)]
        self._ids_type = list[Annotated[int, msgspec.Meta(ge=low, le=high)] | bounded]
        self._clear()

    def _clear(self) -> None:
        self._slots: dict[RowKey, int] = {}
        self._table = np.full((1024, 2), -1, dtype=np.int64)  # (item row, *category rows); slot 0 is padding
        self._widths = np.ones(1024, dtype=np.int64)  # columns each slot uses
        self._size = 1

    def _add(self, key: RowKey, loc: tuple[str | int, ...], id_field: tuple[str, ...]) -> int:
        s, c = self.settings, self.config
        item_id, raw_categories = (key.item_id, key.categories) if type(key) is Candidate else (key, ())
        item = check_id(item_id, (*loc, *id_field), s.max_id_length)  # type: ignore[arg-type]
        categories = check_categories(raw_categories, (*loc, "categories"), s)
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
        older = ids[: len(ids) - len(newest)]
        if older:  # not hashed, but held to the same rules: a bad one is a 422 all the same
            try:
                msgspec.convert(older, self._ids_type)
            except msgspec.ValidationError:
                for i, value in enumerate(older):
                    check_id(value, ("history", i), self.settings.max_id_length)
        return self._rows(newest, "history", (), len(ids) - len(newest), length)

    def logged_history(self, clicks: Sequence[Click]) -> tuple[np.ndarray, np.ndarray]:
        """The service's own record of a user's clicks as history rows."""
        length = self.config.history_length
        newest = clicks[len(clicks) - length :] if length else []
        keys = [Candidate(c.item_id, tuple(c.categories)) for c in newest]
        return self._rows(keys, "history", ("item_id",), 0, length)
