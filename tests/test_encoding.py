"""The row cache gives the rows hashing gives, for decoded bodies and logged clicks alike."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app import encoding
from app.decoding import BodyDecoder
from app.encoding import RequestEncoder
from app.limits import bounded
from app.schemas import Candidate, PredictRequest
from trainer.core.config import ModelConfig
from trainer.core.features import hash_id, user_row
from trainer.core.settings import Settings
from trainer.core.store.base import Click

CONFIG = ModelConfig(user_buckets=512, item_buckets=512, category_buckets=32, history_length=4, hidden=(8,))
VALID: dict[str, Any] = {
    "user_id": "u1",
    "items": [{"item_id": "i1", "categories": ["c1", 7]}, {"item_id": 2}, {"item_id": "i3", "categories": []}],
    "history": ["h1", 5],
}
decode = BodyDecoder(bounded(PredictRequest, Settings())).decode


def item_row(item_id: str) -> int:
    return hash_id(item_id, CONFIG.item_buckets, "item")


def test_rows_are_the_hashed_ids_and_an_integer_id_is_its_string() -> None:
    encoder = RequestEncoder(CONFIG)
    user, (items, cats) = encoder.candidates(decode(json.dumps(VALID).encode()))
    assert user == user_row("u1", CONFIG)
    assert items.tolist() == [item_row(i) for i in ("i1", "2", "i3")]
    c1, c7 = (hash_id(c, CONFIG.category_buckets, "cat") for c in ("c1", "7"))
    assert cats.tolist() == [[c1, c7], [-1, -1], [-1, -1]]
    again = encoder.candidates(decode(json.dumps({**VALID, "user_id": 7}).encode()))
    assert again[0] == user_row("7", CONFIG)
    assert again[1][0].tolist() == items.tolist() and again[1][1].tolist() == cats.tolist()
    # a candidate made here (a logged click) and one decoded from a body have the same rows
    made = encoder.candidates(PredictRequest("u1", [Candidate("i1", ("c1", 7))]))[1]
    assert made[0].tolist() == items[:1].tolist() and made[1].tolist() == cats[:1].tolist()


def test_histories_keep_the_newest_ids_right_aligned() -> None:
    encoder = RequestEncoder(CONFIG)
    sent, sent_cats = encoder.client_history(["a"])
    assert sent.tolist() == [-1, -1, -1, item_row("a")]
    assert sent_cats.tolist() == [[-1]] * 4
    longer = encoder.client_history(["old", 1, "a", "b", "c", 5])[0]
    assert longer.tolist() == [item_row(i) for i in ("a", "b", "c", "5")]
    clicks = [Click(f"x{k}", ()) for k in range(5)] + [Click("i1", ("c1", "c2"))]
    logged, logged_cats = encoder.logged_history(clicks)
    assert logged.tolist() == [item_row(i) for i in ("x2", "x3", "x4", "i1")]
    assert logged_cats.tolist()[-1] == [hash_id(c, CONFIG.category_buckets, "cat") for c in ("c1", "c2")]
    assert logged_cats.tolist()[0] == [-1, -1]
    assert encoder.logged_history([])[0].tolist() == [-1] * 4


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "CACHE_SIZE", 3)
    encoder = RequestEncoder(CONFIG)
    for k in range(10):
        _, (items, _) = encoder.candidates(PredictRequest("u", [Candidate(f"i{k}")]))
        assert items.tolist() == [item_row(f"i{k}")]
        assert len(encoder._slots) <= 3
