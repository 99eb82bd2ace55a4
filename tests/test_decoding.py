"""Request bodies are decoded under exactly the rules their schema in the OpenAPI document
states (the running settings' limits included), and every refusal names its field."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema_rs
import msgspec
import pytest

from app.admin import Version
from app.decoding import BodyDecoder, Invalid, decode_param
from app.limits import bounded
from app.schemas import (
    INT64_MAX,
    INT64_MIN,
    Candidate,
    FieldError,
    InteractionsRequest,
    PredictRequest,
    id_int_range,
)
from trainer.core.settings import Settings

SETTINGS = Settings(max_items=4, max_history=6, max_events=3, max_id_length=8, max_categories=2)
VALID_PREDICT: dict[str, Any] = {
    "user_id": "u1",
    "items": [{"item_id": "i1", "categories": ["c1", 7]}, {"item_id": 2}, {"item_id": "i3", "categories": []}],
    "history": ["h1", 5],
}
VALID_INTERACTIONS: dict[str, Any] = {
    "events": [
        {"user_id": "u", "item_id": 1, "categories": ["c"], "label": 1, "timestamp": 1.5},
        {"user_id": 3, "item_id": "i", "label": 0},
    ]
}
BAD_VALUES: list[Any] = [None, True, 1.5, 1.0, [], {}, "", 0, "x" * 9, 10**8, -(10**7), 10**7, "é" * 8]
EDGE_INTEGERS: list[int] = [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**30]


def variants(valid: dict[str, Any], paths: list[tuple[Any, ...]]) -> list[Any]:
    """``valid`` with each field, in turn, given each kind of value, removed, or joined by another."""
    out: list[Any] = [valid, [valid], "x", 3, None]
    for path in paths:
        for value in [*BAD_VALUES, *EDGE_INTEGERS, "ok", ["a"], [1, "b"], [{"item_id": 1}], [2**63], ["a"] * 7]:
            body = copy.deepcopy(valid)
            target = body
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
            out.append(body)
        body = copy.deepcopy(valid)
        target = body
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        out.append(body)
        out.append({**valid, "extra": 1})
    return out


PREDICT_VARIANTS = variants(
    VALID_PREDICT,
    [
        ("user_id",),
        ("items",),
        ("history",),
        ("items", 0),
        ("items", 0, "item_id"),
        ("items", 0, "categories"),
        ("items", 0, "categories", 1),
        ("history", 1),
    ],
)
INTERACTION_VARIANTS = variants(
    VALID_INTERACTIONS,
    [
        ("events",),
        ("events", 0),
        ("events", 1, "user_id"),
        ("events", 0, "item_id"),
        ("events", 0, "categories"),
        ("events", 0, "categories", 0),
        ("events", 1, "label"),
        ("events", 0, "timestamp"),
    ],
)


def document_validator(body: type) -> Any:
    """A validator of ``body``'s schema, as the OpenAPI document states it under SETTINGS."""
    refs, components = msgspec.json.schema_components([bounded(body, SETTINGS)], ref_template="#/$defs/{name}")
    return jsonschema_rs.validator_for({**refs[0], "$defs": components})


def without_whole_floats(value: Any) -> Any:
    """``value`` with each whole float moved off the integers, away from zero. JSON Schema counts
    1.0 as an integer, the service does not: where the schema wants an integer the moved value is
    refused as the service refuses it, and where it wants a number (no upper bounds here) it is
    as valid as before."""
    if isinstance(value, float) and value.is_integer():
        return value + (0.25 if value >= 0 else -0.25)
    if isinstance(value, dict):
        return {k: without_whole_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_whole_floats(v) for v in value]
    return value


def walk(value: Any, loc: list[Any]) -> Any:
    for step in loc:
        value = value[step]
    return value


@pytest.mark.parametrize(
    ("body", "sent"),
    [(PredictRequest, b) for b in PREDICT_VARIANTS] + [(InteractionsRequest, b) for b in INTERACTION_VARIANTS],
    ids=lambda b: json.dumps(b)[:80] if not isinstance(b, type) else b.__name__,
)
def test_a_body_is_accepted_exactly_when_the_document_says_it_is_valid(body: type, sent: Any) -> None:
    raw = json.dumps(sent).encode()  # the standard library writes integers beyond 64 bits
    validator = document_validator(body)
    valid = validator.is_valid(sent) and validator.is_valid(without_whole_floats(sent))
    decoder = BodyDecoder(bounded(body, SETTINGS))
    if valid:
        assert msgspec.to_builtins(decoder.decode(raw)) == msgspec.to_builtins(msgspec.convert(sent, body))
        return
    with pytest.raises(Invalid) as refused:
        decoder.decode(raw)
    [error] = refused.value.errors
    assert error.loc[0] == "body"
    if error.type == "missing":  # the object it is missing from is there
        assert isinstance(walk(sent, error.loc[1:-1]), dict)
    else:  # the value it names is what was sent there
        assert walk(sent, error.loc[1:]) == error.input


def test_the_decoded_body_is_typed_and_the_last_of_duplicate_keys_counts() -> None:
    decoder = BodyDecoder(bounded(PredictRequest, SETTINGS))
    body = decoder.decode(json.dumps(VALID_PREDICT).encode())
    assert isinstance(body, PredictRequest) and all(isinstance(c, Candidate) for c in body.items)
    assert body.items[0] == type(body.items[0])("i1", ("c1", 7))  # ids stay as sent: 7 is the id "7"
    raw = b'{"user_id": 3, "items": [{"item_id": 1, "item_id": "b"}], "user_id": "a"}'
    body = decoder.decode(raw)
    assert (body.user_id, body.items[0].item_id, body.history) == ("a", "b", None)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_has_not_are_refused_naming_their_field(literal: str) -> None:
    decoder = BodyDecoder(bounded(InteractionsRequest, SETTINGS))
    raw = '{"events": [{"user_id": "u", "item_id": "i", "label": 1}, {"user_id": "u", "item_id": "i", '
    with pytest.raises(Invalid) as refused:
        decoder.decode(f'{raw}"label": 0, "timestamp": {literal}}}]}}'.encode())
    [error] = refused.value.errors
    assert (error.loc, error.type) == (["body", "events", 1, "timestamp"], "finite_number")


def test_bodies_that_are_not_json_are_refused_whole_and_not_echoed() -> None:
    decoder = BodyDecoder(bounded(InteractionsRequest, SETTINGS))
    for raw in (b'{"events": [', b"\xff", b'{"user_id": 1, "items": [}', b'{"events": [{"label": 1,}]}'):
        with pytest.raises(Invalid) as refused:
            decoder.decode(raw)
        [error] = refused.value.errors
        assert (error.loc, error.type, error.input) == (["body"], "json_invalid", None)
    with pytest.raises(Invalid) as refused:  # too deep to read back: refused for its first wrong value
        decoder.decode(b"[" * 100_000 + b"]" * 100_000)
    assert refused.value.errors == [FieldError(["body"], "Expected `object`, got `array`", "type_error")]


@pytest.mark.parametrize("limit", [1, 2, 5, 16, 19, 20, 256])
def test_integer_ids_are_those_whose_decimal_string_fits_the_id_length(limit: int) -> None:
    decoder = BodyDecoder(bounded(Candidate, Settings(max_id_length=limit)))
    low, high = id_int_range(limit)
    for value in (low, high):
        assert len(str(value)) <= limit and decoder.decode(json.dumps({"item_id": value}).encode()).item_id == value
    for value in (low - 1, high + 1):
        assert len(str(value)) > limit or not INT64_MIN <= value <= INT64_MAX
        with pytest.raises(Invalid):
            decoder.decode(json.dumps({"item_id": value}).encode())
    expected = {1: (0, 9), 2: (-9, 99), 16: (1 - 10**15, 10**16 - 1), 19: (1 - 10**18, INT64_MAX)}
    assert (low, high) == expected.get(limit, (INT64_MIN, INT64_MAX) if limit >= 20 else (low, high))


def test_bounded_bodies_are_the_bodies_under_the_settings_values() -> None:
    one, other = bounded(PredictRequest, Settings(max_items=2)), bounded(PredictRequest, Settings(max_items=3))
    assert (
        issubclass(one, PredictRequest) and one.__name__ == "PredictRequest" and one.__doc__ == PredictRequest.__doc__
    )
    three = json.dumps({"user_id": 1, "items": [{"item_id": 1}] * 3}).encode()
    assert len(BodyDecoder(other).decode(three).items) == 3
    with pytest.raises(Invalid) as refused:
        BodyDecoder(one).decode(three)
    assert refused.value.errors[0].loc == ["body", "items"] and refused.value.errors[0].type == "too_long"


@pytest.mark.parametrize(
    ("value", "kind"), [("0", "greater_than_equal"), ("x", "type_error"), ("99999999999999999999", "less_than_equal")]
)
def test_path_parameters_are_read_as_their_type(value: str, kind: str) -> None:
    assert decode_param("12", Version, ("path", "version")) == 12
    with pytest.raises(Invalid) as refused:
        decode_param(value, Version, ("path", "version"))
    [error] = refused.value.errors
    assert (error.loc, error.type, error.input) == (["path", "version"], kind, value)
