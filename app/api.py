"""The service's routes for clients and probes: scoring, logging, health and metrics
(the operators' are in ``app/admin.py``)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from app.encoding import Encoded
from app.errors import STORE_ERRORS
from app.limits import bounded
from app.routing import Answer, Reply, Route
from app.runtime import Runtime
from app.schemas import (
    Health,
    InteractionsAccepted,
    InteractionsRequest,
    PredictRequest,
    PredictResponse,
    Ready,
    TrainerHealthOut,
)
from trainer.core.health import trainer_health
from trainer.core.settings import Settings
from trainer.core.store.base import Interaction


def check_route(path: str, handler: Any, body: type, ok: str, failing: str) -> Route:
    """A health check: 200 when it passes, 503 when it does not, the same body either way."""
    return Route("GET", path, handler, Reply(body, ok), responses={503: Reply(body, failing)}, tags=("health",))


def api_routes(settings: Settings) -> list[Route]:
    return [
        Route(
            "POST",
            "/v1/predict",
            predict,
            Reply(PredictResponse, "The scores, and the version that gave them."),
            body=bounded(PredictRequest, settings),
            tags=("scoring",),
        ),
        Route(
            "POST",
            "/v1/interactions",
            log_interactions,
            Reply(InteractionsAccepted, "Every event is durably logged."),
            status=202,
            body=bounded(InteractionsRequest, settings),
            tags=("logging",),
        ),
        Route("GET", "/healthz", healthz, Reply(Health, "The process is up."), tags=("health",)),
        check_route("/readyz", readyz, Ready, "Ready.", "Not ready: no model loaded, or the store does not answer."),
        check_route(
            "/healthz/trainer",
            trainer_healthz,
            TrainerHealthOut,
            "The trainer makes progress.",
            "The trainer has stalled, or the store does not answer.",
        ),
        Route(
            "GET",
            "/metrics",
            prometheus,
            Reply(str, "Prometheus text exposition.", CONTENT_TYPE_LATEST),
            tags=("health",),
        ),
    ]


async def predict(rt: Runtime, body: PredictRequest) -> PredictResponse:
    """Click probabilities of the candidates for this user, from the serving model.

    The user's history is the client's ``history`` if given, else the service's own record
    of their latest clicks.
    """
    user, candidates = rt.encoder.candidates(body)
    user_id, history_ids = body.user_id, body.history
    # nothing of the parsed body lives on while the request waits: objects that outlive a
    # collection pile up for the slow ones
    del body
    if history_ids is not None:
        history = rt.encoder.client_history(history_ids)
    else:
        length = rt.model_config.history_length
        clicks = await rt.store.recent_clicks_async(str(user_id), length) if length and rt.holder.current else []
        history = rt.encoder.logged_history(clicks)
    del history_ids
    scores, model = await rt.batcher.score(Encoded(user, *candidates, *history))
    rt.metrics.items_scored.inc(len(scores))
    return PredictResponse(scores, model.version, model.period)


async def log_interactions(rt: Runtime, body: InteractionsRequest) -> InteractionsAccepted:
    """Log impressions and clicks, all or none. A 2xx means every event is durably in the log."""
    now = time.time()
    events = [
        Interaction(
            user_id=str(e.user_id),
            item_id=str(e.item_id),
            categories=tuple(map(str, e.categories)),
            label=e.label,
            timestamp=now if e.timestamp is None else e.timestamp,
        )
        for e in body.events
    ]
    del body
    # awaited, never blocking the loop: a stalled store holds up only the requests that wait for it
    period = await rt.store.append_async(events, rt.settings.history_length)
    rt.metrics.interactions.inc(len(events))
    return InteractionsAccepted(len(events), period)


async def healthz(rt: Runtime) -> Health:
    """The process is up."""
    return Health()


def readyz(rt: Runtime) -> Answer:
    """A model is loaded and the store answers (200, else 503).

    The body also says whether this replica serves the version the registry points at, and
    how the trainer fares; neither changes the status: a replica serving an older version
    still serves.
    """
    model = rt.holder.current
    try:
        pointer, status = rt.store.pointer(), rt.store.trainer_status()
    except STORE_ERRORS:
        pointer, status = None, None
    ready = Ready(
        ready=model is not None and pointer is not None,
        model_version=model.version if model else None,
        store=pointer is not None,
        pointer_version=pointer.version if pointer else None,
        load_error=rt.watcher.load_error,
        trainer=trainer_health_out(status, rt.settings) if status is not None else None,
    )
    return Answer(200 if ready.ready else 503, ready)


def trainer_healthz(rt: Runtime) -> Answer:
    """200 while the trainer makes progress, 503 once it has shown none for
    ASMG_TRAINER_STALL_SECONDS (dead, hung, cut off from the store, or failing), or the store
    does not answer. For an operator's check; the API serves either way."""
    health = trainer_health_out(rt.store.trainer_status(), rt.settings)
    return Answer(200 if health.ok else 503, health)


def prometheus(rt: Runtime) -> bytes:
    """Prometheus exposition."""
    return rt.metrics.exposition()


def trainer_health_out(status: dict[str, Any], settings: Settings) -> TrainerHealthOut:
    health = trainer_health(status, time.time(), settings.trainer_stall_seconds)
    return TrainerHealthOut(
        ok=health.ok,
        reason=health.reason,
        heartbeat_age_seconds=health.heartbeat_age,
        state=status.get("state"),
        consecutive_failures=int(status.get("consecutive_failures") or 0),
        last_success=status.get("last_success"),
    )
