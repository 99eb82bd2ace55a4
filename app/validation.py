"""Request bodies that break a rule get a 422 shaped like FastAPI's own,
naming the offending field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from trainer.settings import Settings

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
