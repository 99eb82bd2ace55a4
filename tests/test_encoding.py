"""The quick read of /v1/predict bodies accepts exactly what pydantic accepts,
reads it the same, and its row cache gives the rows hashing gives."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app import encoding
from app.encoding import Candidate, PredictQuery, RequestEncoder, _quick_query, read_predict
from app.schemas import INT64_MAX, INT64_MIN, IdRules, PredictRequest
from app.validation import check_id
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
BAD_VALUES: list[Any] = [None, True, 1.5, 1.0, [], {}, "", 0]
# integer ids: within 64 bits (signed) or refused, by both readers
EDGE_INTEGERS: list[int] = [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**30]


def variants() -> list[Any]:
    """VALID with each field, in turn, given each kind of value, removed, or joined by another."""
    out: list[Any] = [VALID, [VALID], "x", 3, None]
    paths: list[tuple[Any, ...]] = [
        ("user_id",),
        ("items",),
        ("history",),
        ("items", 0),
        ("items", 0, "item_id"),
        ("items", 0, "categories"),
        ("items", 0, "categories", 1),
        ("history", 1),
    ]
    for path in paths:
        for value in [*BAD_VALUES, *EDGE_INTEGERS, "ok", ["a"], [1, "b"], [{"item_id": 1}], [2**63]]:
            body = copy.deepcopy(VALID)
            target = body
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
            out.append(body)
        body = copy.deepcopy(VALID)
        target = body
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        out.append(body)
    for extra in (
        {"extra": 1},
        {"items": [{"item_id": 1, "score": 2}]},
        {"items": [{"item_id": 1, "categories": [], "score": 2}]},
        {"items": [{"categories": ["c"]}]},
    ):
        out.append({**VALID, **extra})
    return out


def pydantic_query(raw: bytes) -> PredictQuery | None:
    try:
        body = PredictRequest.model_validate_json(raw)
    except ValidationError:
        return None
    return PredictQuery(body.user_id, [Candidate(c.item_id, tuple(c.categories)) for c in body.items], body.history)


@pytest.mark.parametrize("body", variants(), ids=lambda b: json.dumps(b)[:80])
def test_the_quick_read_accepts_what_pydantic_accepts_and_reads_it_the_same(body: Any) -> None:
    raw = json.dumps(body).encode()  # orjson cannot write integers beyond 64 bits
    quick = _quick_query(raw)
    expected = pydantic_query(raw)
    if quick is not None:  # it may pass a body on to pydantic, but never accept one pydantic refuses
        assert quick == expected
    if expected is None:
        with pytest.raises(RequestValidationError):
            read_predict(raw)
    else:
        assert read_predict(raw) == expected


def test_well_formed_bodies_take_the_quick_read() -> None:
    assert _quick_query(orjson.dumps(VALID)) is not None
    assert _quick_query(b'{"user_id": 3, "items": [{"item_id": 1}]}') is not None
    # duplicate keys, as JSON parsers read them: the last one counts, in both readers
    raw = b'{"user_id": 3, "items": [{"item_id": 1, "item_id": "b"}], "user_id": "a"}'
    assert _quick_query(raw) == pydantic_query(raw) == PredictQuery("a", [Candidate("b")], None)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 123456789012345678901234567890])
def test_integer_ids_beyond_64_bits_are_refused_naming_the_field(value: int) -> None:
    for body in (
        {"user_id": value, "items": [{"item_id": 1}]},
        {"user_id": 1, "items": [{"item_id": 1, "categories": [value]}]},
        {"user_id": 1, "items": [{"item_id": 1}], "history": ["a", value]},
    ):
        raw = json.dumps(body).encode()
        assert _quick_query(raw) is None and pydantic_query(raw) is None
        with pytest.raises(RequestValidationError) as caught:
            read_predict(raw)
        [loc] = [e["loc"] for e in caught.value.errors() if e["type"] != "string_type"]
        assert loc[-1] == "int" and ("user_id" in loc or "categories" in loc or "history" in loc)
    edge = json.dumps({"user_id": 2**63 - 1, "items": [{"item_id": -(2**63)}]}).encode()
    assert read_predict(edge) == pydantic_query(edge) == PredictQuery(2**63 - 1, [Candidate(-(2**63))], None)


def test_history_ids_the_model_does_not_use_are_still_checked() -> None:
    encoder = RequestEncoder(CONFIG, Settings(max_id_length=4))  # CONFIG uses the newest 4
    assert encoder.client_history(["a", 1234, "b", "c", "d", "e"])[0].shape == (4,)
    for bad, index in (
        (["toolong", "b", "c", "d", "e"], 0),
        (["a", "", "b", "c", "d", "e"], 1),
        ([12345] + ["a"] * 4, 0),
    ):
        with pytest.raises(RequestValidationError) as caught:
            encoder.client_history(bad)
        assert caught.value.errors()[0]["loc"] == ("body", "history", index)


def test_rows_are_the_hashed_ids_and_an_integer_id_is_its_string() -> None:
    encoder = RequestEncoder(CONFIG, Settings())
    user, (items, cats) = encoder.candidates(read_predict(orjson.dumps(VALID)))
    assert user == user_row("u1", CONFIG)
    assert items.tolist() == [hash_id(i, CONFIG.item_buckets, "item") for i in ("i1", "2", "i3")]
    c1, c7 = (hash_id(c, CONFIG.category_buckets, "cat") for c in ("c1", "7"))
    assert cats.tolist() == [[c1, c7], [-1, -1], [-1, -1]]
    again = encoder.candidates(read_predict(orjson.dumps({**VALID, "user_id": "u1"})))[1]
    assert again[0].tolist() == items.tolist() and again[1].tolist() == cats.tolist()


def test_histories_keep_the_newest_ids_right_aligned() -> None:
    encoder = RequestEncoder(CONFIG, Settings())
    sent, sent_cats = encoder.client_history(["a"])
    assert sent.tolist() == [-1, -1, -1, hash_id("a", CONFIG.item_buckets, "item")]
    assert sent_cats.tolist() == [[-1]] * 4
    clicks = [Click(f"x{k}", ()) for k in range(5)] + [Click("i1", ("c1", "c2"))]
    logged, logged_cats = encoder.logged_history(clicks)
    assert logged.tolist() == [hash_id(i, CONFIG.item_buckets, "item") for i in ("x2", "x3", "x4", "i1")]
    assert logged_cats.tolist()[-1] == [hash_id(c, CONFIG.category_buckets, "cat") for c in ("c1", "c2")]
    assert logged_cats.tolist()[0] == [-1, -1]
    assert encoder.logged_history([])[0].tolist() == [-1] * 4


def test_an_id_over_the_limit_is_refused_every_time_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = RequestEncoder(CONFIG, Settings(max_id_length=4))
    body = orjson.dumps({"user_id": "u", "items": [{"item_id": "ok"}, {"item_id": "toolong"}]})
    for _ in range(2):
        with pytest.raises(RequestValidationError) as caught:
            encoder.candidates(read_predict(body))
        assert caught.value.errors()[0]["loc"] == ("body", "items", 1, "item_id")


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "CACHE_SIZE", 3)
    encoder = RequestEncoder(CONFIG, Settings())
    for k in range(10):
        _, (items, _) = encoder.candidates(PredictQuery("u", [Candidate(f"i{k}")], None))
        assert items.tolist() == [hash_id(f"i{k}", CONFIG.item_buckets, "item")]
        assert len(encoder._slots) <= 3


@pytest.mark.parametrize("limit", [1, 2, 5, 16, 19, 20, 256])
def test_the_documented_integer_range_is_what_check_id_lets_through(limit: int) -> None:
    low, high = IdRules(limit).int_range()
    for value in (low, high):
        assert check_id(value, ["user_id"], limit) == str(value)
    for value in (low - 1, high + 1):
        if INT64_MIN <= value <= INT64_MAX:  # past 64 bits the schema itself refuses it
            with pytest.raises(RequestValidationError):
                check_id(value, ["user_id"], limit)
    expected = {1: (0, 9), 2: (-9, 99), 16: (1 - 10**15, 10**16 - 1), 19: (1 - 10**18, INT64_MAX)}
    assert (low, high) == expected.get(limit, (INT64_MIN, INT64_MAX) if limit >= 20 else (low, high))
