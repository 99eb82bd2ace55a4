"""Request and response bodies of the HTTP API.

Ids are strings or integers; an integer means the same as its decimal string
(``5`` and ``"5"`` are one user) and must fit in a signed 64-bit integer. The
models here hold the rules that do not depend on settings (types, no unknown
keys, no coercion, integer labels, finite timestamps). Limits that depend on
settings (items per request, id length...) are checked by the routes
(``app/validation.py``, ``app/encoding.py``) and reported as 422 naming the
field, like every other validation error; :func:`bounded_requests` adds them
to the request models for the OpenAPI document, with the running values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import BaseMetadata
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, create_model
from pydantic.fields import FieldInfo
from pydantic_core import core_schema

from trainer.core.settings import Settings

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ID_DESCRIPTION = (
    "A string of 1 to ASMG_MAX_ID_LENGTH characters, or an integer, which means the same as its decimal string: "
    "a signed 64-bit one whose decimal string is no longer than that."
)


class IdRules:
    """An id's schema: a string or a 64-bit integer, neither coerced into the other.

    With ``max_length``, also the settings' bounds: a string of 1 to ``max_length``
    characters, an integer whose decimal string is no longer (what
    :func:`app.validation.check_id` enforces). The union's members keep the tags
    ``str`` and ``int`` in error locations, as a plain ``StrictStr | StrictInt`` does.
    """

    def __init__(self, max_length: int | None = None) -> None:
        self.max_length = max_length

    def int_range(self) -> tuple[int, int]:
        if self.max_length is None:
            return INT64_MIN, INT64_MAX
        return max(INT64_MIN, 1 - 10 ** (self.max_length - 1)), min(INT64_MAX, 10**self.max_length - 1)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        low, high = self.int_range()
        text = core_schema.str_schema(
            strict=True, min_length=None if self.max_length is None else 1, max_length=self.max_length
        )
        return core_schema.union_schema([(text, "str"), (core_schema.int_schema(strict=True, ge=low, le=high), "int")])


Id = Annotated[str | int, IdRules(), Field(description=ID_DESCRIPTION)]


class Strict(BaseModel):
    # no unknown keys, and no coercion: `true` is not 1, `"5"` not 5.0
    model_config = ConfigDict(extra="forbid", strict=True)


class Candidate(Strict):
    item_id: Id
    categories: list[Id] = Field(default_factory=list, description="The item's categories (genres, shops...).")


class PredictRequest(Strict):
    user_id: Id
    items: list[Candidate] = Field(min_length=1, description="Candidates to score; at most ASMG_MAX_ITEMS.")
    history: list[Id] | None = Field(
        None,
        description="The user's latest clicked item ids, oldest first, for callers that keep their own "
        "feature store; at most ASMG_MAX_HISTORY, of which the model uses the newest ASMG_HISTORY_LENGTH. "
        "Their categories are not known, so they count as uncategorised. Absent: the service's own record "
        "of the user's clicks.",
    )


class PredictResponse(BaseModel):
    scores: list[float] = Field(description="Click probability per candidate, in request order.")
    model_version: int = Field(description="The registry version that scored the request.")
    period: int = Field(description="The period this version was published for (it learnt up to period - 1).")


class InteractionIn(Strict):
    user_id: Id
    item_id: Id
    categories: list[Id] = Field(default_factory=list)
    label: int = Field(ge=0, le=1, description="1 for a click, 0 for an impression without one (JSON integers only).")
    timestamp: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds since the epoch, a finite number; the time of receipt when absent. Kept as a record "
        "only: histories follow log order.",
    )


class InteractionsRequest(Strict):
    events: list[InteractionIn] = Field(min_length=1, description="At most ASMG_MAX_EVENTS events.")


class InteractionsAccepted(BaseModel):
    accepted: int = Field(description="Events durably logged.")
    period: int = Field(description="The period they landed in.")


class RolloverResponse(BaseModel):
    closed_period: int
    open_period: int
    queued_periods: int = Field(description="Closed periods waiting for the trainer, this one included.")


class VersionOut(BaseModel):
    version: int
    sha256: str
    trained_through: int
    method: str
    created: float
    size: int
    metrics: dict[str, float]
    note: str
    serving: bool = Field(description="Whether the pointer names this version.")


class PointerOut(BaseModel):
    version: int | None
    pinned: bool


class StatusResponse(BaseModel):
    open_period: int
    open_period_events: int = Field(description="Interactions logged in the open period so far.")
    trained_through: int
    serving_version: int | None = Field(description="The version this replica serves.")
    pointer: PointerOut
    trainer: dict[str, Any] = Field(description="The trainer's status record: state, period, last period's metrics.")


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class TrainerHealthOut(BaseModel):
    ok: bool = Field(description="The trainer made progress within ASMG_TRAINER_STALL_SECONDS.")
    reason: str = Field(description="Why not ok; empty when ok.")
    heartbeat_age_seconds: float | None = Field(description="Seconds since the trainer last showed progress.")
    state: str | None = Field(None, description="idle, training or retrying.")
    consecutive_failures: int = Field(0, description="Failed rounds since the last good one.")
    last_success: float | None = Field(None, description="When the trainer last committed a period (epoch seconds).")


class Ready(BaseModel):
    ready: bool = Field(description="A model is loaded and the store answers.")
    model_version: int | None = Field(description="The version this replica serves.")
    store: bool = Field(description="Whether the store answered.")
    pointer_version: int | None = Field(
        None,
        description="The version the registry's pointer names; it differs from model_version while a swap "
        "is under way, or when this replica cannot load it (load_error).",
    )
    load_error: str | None = Field(None, description="Why this replica does not serve the pointer's version.")
    trainer: TrainerHealthOut | None = Field(None, description="The trainer's health, as at /healthz/trainer.")


def _narrowed(model: type[BaseModel], **fields: tuple[Any, dict[str, Any]]) -> type[BaseModel]:
    """``model`` under its own name, with ``fields`` given a new type (or None: the same) and more
    constraints, keeping their own constraints, default and description."""
    definitions: dict[str, Any] = {}
    for name, (annotation, constraints) in fields.items():
        info: FieldInfo = model.model_fields[name]
        kept: dict[str, Any] = {"description": info.description}
        if info.default_factory is not None:
            kept["default_factory"] = info.default_factory
        elif not info.is_required():
            kept["default"] = info.default
        typed: Any = info.annotation if annotation is None else annotation
        own = [m for m in info.metadata if isinstance(m, BaseMetadata)]  # its constraints (min_length=1...)
        if own:
            typed = Annotated[(typed, *own)]
        definitions[name] = (typed, Field(**kept, **constraints))
    return create_model(model.__name__, __base__=model, __doc__=model.__doc__, **definitions)


def bounded_requests(settings: Settings) -> tuple[type[BaseModel], type[BaseModel]]:
    """PredictRequest and InteractionsRequest as the routes take them under ``settings``: the
    models' own rules plus the settings' limits, for the OpenAPI document."""
    s = settings
    id_ = Annotated[str | int, IdRules(s.max_id_length), Field(description=ID_DESCRIPTION)]
    categories = (list[id_], {"max_length": s.max_categories})
    candidate = _narrowed(Candidate, item_id=(id_, {}), categories=categories)
    predict = _narrowed(
        PredictRequest,
        user_id=(id_, {}),
        items=(list[candidate], {"max_length": s.max_items}),  # type: ignore[valid-type]
        history=(list[id_] | None, {"max_length": s.max_history}),
    )
    event = _narrowed(InteractionIn, user_id=(id_, {}), item_id=(id_, {}), categories=categories)
    interactions = _narrowed(InteractionsRequest, events=(list[event], {"max_length": s.max_events}))  # type: ignore[valid-type]
    return predict, interactions
