"""Request bodies that break a rule get a 422 shaped like FastAPI's own,
naming the offending field."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from trainer.core.settings import Settings

Body = TypeVar("Body", bound=BaseModel)


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """The JSON body as ``model``, parsed and validated in one pass (pydantic's
    own JSON parser: no intermediate Python dicts); errors are FastAPI's 422."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            # an unparsable body is not echoed back whole
            {**e, "loc": ("body", *e["loc"]), **({"input": None} if not e["loc"] else {})}
            for e in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None


def json_safe(value: Any) -> Any:
    """``value`` (JSON-like) as orjson can write it. orjson refuses integers beyond 64 bits, which
    a 422 echoes when a client sent one: those are written as the very digits that came in; NaN
    and infinities, which JSON cannot carry, are null."""
    if type(value) is int:
        if -(2**63) <= value < 2**64:
            return value
        try:
            return orjson.Fragment(str(value))
        except ValueError:  # over the interpreter's digit limit (no JSON parser here yields one)
            return None
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def invalid(loc: Sequence[str | int], message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": message, "input": None}])


def check_id(value: str | int, loc: Sequence[str | int], limit: int) -> str:
    if isinstance(value, int) and value.bit_length() > 4 * limit:  # str() of a huge int is slow, then refused
        raise invalid(loc, f"ids must be 1 to {limit} characters long", "string_too_long")
    text = str(value)
    if not text or len(text) > limit:
        raise invalid(
            loc, f"ids must be 1 to {limit} characters long", "string_too_long" if text else "string_too_short"
        )
    return text


def check_categories(values: Sequence[str | int], loc: Sequence[str | int], settings: Settings) -> tuple[str, ...]:
    if len(values) > settings.max_categories:
        raise invalid(loc, f"at most {settings.max_categories} categories per item", "too_long")
    return tuple(check_id(c, (*loc, i), settings.max_id_length) for i, c in enumerate(values))
