"""Request bodies and path parameters decoded by their type, or a 422 naming the field.

A body is decoded by msgspec in one pass, in C, under every rule of its type
(``app/schemas.py`` bounded by ``app/limits.py``). Only a body it refuses
goes further: msgspec says what is wrong and where (``Expected `int` <= 1 -
at `$.events[0].label```), which is worded here as an error naming the
field, with the value the client sent there. msgspec reads nothing but JSON,
so for a body that is not JSON the standard library's parser, which also
takes ``NaN`` and ``Infinity``, tells whether one of those is what it holds,
and where. None of this runs for a body that is accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from app.schemas import FieldError

T = TypeVar("T")

_WHERE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>.*)`$", re.DOTALL)
# what each of msgspec's messages is, in FastAPI's words where it has them
_KINDS = (
    ("Object missing required field", "missing"),
    ("Object contains unknown field", "extra_forbidden"),
    ("Expected `array` of length >=", "too_short"),
    ("Expected `array` of length <=", "too_long"),
    ("Expected `str` of length >=", "string_too_short"),
    ("Expected `str` of length <=", "string_too_long"),
    ("out of range", "out_of_range"),
    (">=", "greater_than_equal"),
    ("<=", "less_than_equal"),
    (">", "greater_than"),
    ("<", "less_than"),
    ("got `", "type_error"),
)


class Invalid(Exception):
    """A request that breaks a rule: a 422 with these errors."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(errors)
        self.errors = list(errors)


class BodyDecoder(Generic[T]):
    """JSON bodies of one type."""

    def __init__(self, body: type[T]) -> None:
        self.type = body
        self._decode = msgspec.json.Decoder(body).decode

    def decode(self, raw: bytes) -> T:
        try:
            body: T = self._decode(raw)
        except msgspec.DecodeError as exc:  # a ValidationError is one too
            raise Invalid([self.explain(raw, exc)]) from None
        return body

    def explain(self, raw: bytes, error: msgspec.DecodeError) -> FieldError:
        """The field error behind msgspec's refusal of ``raw``."""
        try:
            sent = msgspec.json.decode(raw)  # the body as JSON values: what the error echoes
        except (msgspec.ValidationError, RecursionError):  # an integer msgspec cannot hold, deep nesting
            sent = _UNREAD  # nothing to echo
        except msgspec.DecodeError as malformed:  # even if the typed decode met a wrong field first
            return self._not_json(raw, malformed)
        if isinstance(error, msgspec.ValidationError):
            return field_error(str(error), ("body",), sent)
        return FieldError(["body"], str(error), "json_invalid", None)

    def _not_json(self, raw: bytes, malformed: msgspec.DecodeError) -> FieldError:
        """A 422 for a body that is not JSON, naming the field where it holds NaN or Infinity
        (which JSON has not, and the standard library's parser takes)."""
        try:
            sent = json.loads(raw, parse_constant=NotFinite)
            msgspec.convert(sent, self.type)
        except msgspec.ValidationError as refused:
            return field_error(str(refused), ("body",), sent)
        except (ValueError, RecursionError):
            pass
        return FieldError(["body"], str(malformed), "json_invalid", None)  # not echoed back: it may be anything


def decode_param(value: str, param: type[T], loc: Sequence[str | int]) -> T:
    """A path parameter as ``param`` (its string read as the type: ``"5"`` as 5)."""
    try:
        converted: T = msgspec.convert(value, param, strict=False)
    except msgspec.ValidationError as exc:
        raise Invalid([field_error(str(exc), loc, value)]) from None
    return converted


def field_error(message: str, base: Sequence[str | int], sent: Any) -> FieldError:
    """msgspec's ``message`` as an error located under ``base``, echoing what was ``sent`` there."""
    match = _WHERE.match(message)
    assert match is not None  # the pattern matches any string
    what, path = match["what"], match["path"] or ""
    loc: list[str | int] = [*base, *(name if index == "" else int(index) for name, index in _STEP.findall(path))]
    named = _NAMED_FIELD.match(what)
    if named:  # a key missing from an object, or one it must not have: the key is the field
        loc.append(named["name"])
    value = _value_at(sent, loc[len(base) :]) if not what.startswith("Object missing") else None
    kind = next((kind for marker, kind in _KINDS if marker in what), "value_error")
    if isinstance(value, NotFinite):
        what, kind, value = f"Expected a finite number, got {value.name}", "finite_number", None
    return FieldError(loc, what, kind, None if value is _UNREAD else value)


class NotFinite:
    """``NaN`` or ``Infinity`` in a body: refused, but located (JSON has neither)."""

    def __init__(self, name: str) -> None:
        self.name = name


_UNREAD = object()  # what a body that could not be read holds anywhere


def _value_at(document: Any, path: Sequence[str | int]) -> Any:
    for step in path:
        try:
            document = document[step]
        except (LookupError, TypeError):  # the path runs past what was sent (a missing key)
            return _UNREAD
    return document
