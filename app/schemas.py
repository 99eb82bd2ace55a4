"""Request and response bodies of the HTTP API.

Ids are strings or integers; an integer id means the same as its decimal
string (``5`` and ``"5"`` are one user). Limits that depend on settings
(items per request, id length) are checked in the routes and reported as 422
naming the field, like every other validation error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Id = Annotated[
    StrictStr | StrictInt,
    Field(description="A string or an integer; an integer means the same as its decimal string."),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    label: Literal[0, 1] = Field(description="1 for a click, 0 for an impression without one.")
    timestamp: float | None = Field(
        None,
        gt=0,
        description="Seconds since the epoch; the time of receipt when absent. Kept as a record only: "
        "histories follow log order.",
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


class Ready(BaseModel):
    ready: bool
    model_version: int | None
    store: bool
