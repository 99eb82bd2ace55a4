"""Request and response bodies of the HTTP API: msgspec Structs, the one definition
from which the decoders and the OpenAPI document both come.

Ids are strings or integers; an integer means the same as its decimal string
(``5`` and ``"5"`` are one user). Nothing is coerced: msgspec takes no string
for an integer nor an integer for a string, no ``true`` for 1 and no ``1.0``
for an integer; unknown keys are refused. The bounds that the settings give
(items per request, id length...) are :class:`app.limits.Limit` metadata,
set to the running values by :func:`app.limits.bounded`; each bound is
written once, on its field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from app.limits import Limit
from trainer.core.settings import Settings

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ID_DESCRIPTION = (
    "A string of 1 to ASMG_MAX_ID_LENGTH characters, or an integer, which means the same as its decimal string: "
    "a signed 64-bit one whose decimal string is no longer than that."
)


def id_int_range(max_length: int) -> tuple[int, int]:
    """The integers whose decimal string (sign included) has at most ``max_length`` characters
    and that fit in a signed 64-bit integer, as the stores keep them."""
    return max(INT64_MIN, 1 - 10 ** (max_length - 1)), min(INT64_MAX, 10**max_length - 1)


def _id_range(settings: Settings) -> Meta:
    low, high = id_int_range(settings.max_id_length)
    return Meta(ge=low, le=high)


Id = Annotated[
    Annotated[str, Meta(min_length=1), Limit(lambda s: Meta(max_length=s.max_id_length))]
    | Annotated[int, Limit(_id_range)],
    Meta(description=ID_DESCRIPTION),
]
Categories = Annotated[
    tuple[Id, ...],
    Meta(description="The item's categories (genres, shops...); at most ASMG_MAX_CATEGORIES."),
    Limit(lambda s: Meta(max_length=s.max_categories)),
]
# named, not written in the annotations below: msgspec evaluates those strings where a lambda's names are unknown
MAX_ITEMS = Limit(lambda s: Meta(max_length=s.max_items))
MAX_HISTORY = Limit(lambda s: Meta(max_length=s.max_history))
MAX_EVENTS = Limit(lambda s: Meta(max_length=s.max_events))


# Request bodies. gc=False: a decoded body holds no cycles, so the collector need not track it.


class Candidate(Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A candidate item; also the key of its rows in the encoder's cache (frozen: hashable)."""

    item_id: Id
    categories: Categories = ()


class PredictRequest(Struct, forbid_unknown_fields=True, gc=False):
    """The user and the candidates to score for them."""

    user_id: Id
    items: Annotated[
        list[Candidate],
        Meta(min_length=1, description="Candidates to score; at most ASMG_MAX_ITEMS."),
        MAX_ITEMS,
    ]
    history: Annotated[
        Annotated[list[Id], MAX_HISTORY] | None,
        Meta(
            description="The user's latest clicked item ids, oldest first, for callers that keep their own "
            "feature store; at most ASMG_MAX_HISTORY, of which the model uses the newest ASMG_HISTORY_LENGTH. "
            "Their categories are not known, so they count as uncategorised. Absent: the service's own record "
            "of the user's clicks."
        ),
    ] = None


class InteractionIn(Struct, forbid_unknown_fields=True, gc=False):
    """One impression, clicked or not."""

    user_id: Id
    item_id: Id
    label: Annotated[
        int, Meta(ge=0, le=1, description="1 for a click, 0 for an impression without one (JSON integers only).")
    ]
    categories: Categories = ()
    # JSON has no Infinity or NaN, and msgspec refuses a number too large for a float (1e400): always finite
    timestamp: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(
            description="Seconds since the epoch, a finite number; the time of receipt when absent. Kept as a "
            "record only: histories follow log order."
        ),
    ] = None


class InteractionsRequest(Struct, forbid_unknown_fields=True, gc=False):
    """Events to log, all or none."""

    events: Annotated[
        list[InteractionIn],
        Meta(min_length=1, description="At most ASMG_MAX_EVENTS events."),
        MAX_EVENTS,
    ]


# Response bodies.


class PredictResponse(Struct):
    scores: Annotated[list[float], Meta(description="Click probability per candidate, in request order.")]
    model_version: Annotated[int, Meta(description="The registry version that scored the request.")]
    period: Annotated[int, Meta(description="The period this version was published for (it learnt up to period - 1).")]


class InteractionsAccepted(Struct):
    accepted: Annotated[int, Meta(description="Events durably logged.")]
    period: Annotated[int, Meta(description="The period they landed in.")]


class RolloverResponse(Struct):
    closed_period: int
    open_period: int
    queued_periods: Annotated[int, Meta(description="Closed periods waiting for the trainer, this one included.")]


class VersionOut(Struct):
    version: int
    sha256: str
    trained_through: int
    method: str
    created: float
    size: int
    metrics: Annotated[dict[str, float | None], Meta(description="null where a figure is undefined (NaN).")]
    note: str
    serving: Annotated[bool, Meta(description="Whether the pointer names this version.")]


class PointerOut(Struct):
    version: int | None
    pinned: bool


class StatusResponse(Struct):
    open_period: int
    open_period_events: Annotated[int, Meta(description="Interactions logged in the open period so far.")]
    trained_through: int
    serving_version: Annotated[int | None, Meta(description="The version this replica serves.")]
    pointer: PointerOut
    trainer: Annotated[
        dict[str, Any], Meta(description="The trainer's status record: state, period, last period's metrics.")
    ]


class Health(Struct):
    status: Literal["ok"] = "ok"


class TrainerHealthOut(Struct):
    ok: Annotated[bool, Meta(description="The trainer made progress within ASMG_TRAINER_STALL_SECONDS.")]
    reason: Annotated[str, Meta(description="Why not ok; empty when ok.")]
    heartbeat_age_seconds: Annotated[float | None, Meta(description="Seconds since the trainer last showed progress.")]
    state: Annotated[str | None, Meta(description="idle, training or retrying.")] = None
    consecutive_failures: Annotated[int, Meta(description="Failed rounds since the last good one.")] = 0
    last_success: Annotated[
        float | None, Meta(description="When the trainer last committed a period (epoch seconds).")
    ] = None


class Ready(Struct):
    ready: Annotated[bool, Meta(description="A model is loaded and the store answers.")]
    model_version: Annotated[int | None, Meta(description="The version this replica serves.")]
    store: Annotated[bool, Meta(description="Whether the store answered.")]
    pointer_version: Annotated[
        int | None,
        Meta(
            description="The version the registry's pointer names; it differs from model_version while a swap "
            "is under way, or when this replica cannot load it (load_error)."
        ),
    ] = None
    load_error: Annotated[str | None, Meta(description="Why this replica does not serve the pointer's version.")] = None
    trainer: Annotated[TrainerHealthOut | None, Meta(description="The trainer's health, as at /healthz/trainer.")] = (
        None
    )


# Error bodies.


class Problem(Struct):
    detail: str


class FieldError(Struct):
    """What is wrong with one field of a request."""

    loc: Annotated[list[str | int], Meta(description='Where: "body" or "path", then the field\'s keys and indices.')]
    msg: str
    type: str
    input: Annotated[Any, Meta(description="The value sent there, if there is one.")] = None


class InvalidRequest(Struct):
    """A 422: the request breaks a rule; each error names its field."""

    detail: list[FieldError]
