"""The FastAPI application: scoring, interaction logging, health and metrics.

``create_app`` wires one process: the store, the served-model reference and
its swap watcher, and, on the embedded default, the trainer and the rollover
schedule as background threads.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import torch
from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from app.admin import admin_router
from app.batching import MicroBatcher, NoModelError
from app.encoding import Encoded, RequestEncoder, read_predict
from app.hot import ERROR_RESPONSES, STORE_ERRORS, STORE_UNAVAILABLE, Answer, HotRoutes
from app.metrics import RequestMetrics, ServiceMetrics
from app.schemas import (
    Health,
    InteractionsAccepted,
    InteractionsRequest,
    PredictRequest,
    PredictResponse,
    Problem,
    Ready,
    TrainerHealthOut,
    bounded_requests,
)
from app.serving import ModelHolder, ServedModel, SwapWatcher
from app.validation import check_categories, check_id, invalid, parse_body
from trainer.core.config import ModelConfig
from trainer.core.health import trainer_health
from trainer.core.settings import Settings
from trainer.core.store import open_store
from trainer.core.store.base import Interaction, Store
from trainer.loop.schedule import start_rollover_schedule
from trainer.loop.worker import PeriodTrainer, ensure_initial_model, run_supervised

log = logging.getLogger("asmg.api")


@dataclass
class Runtime:
    """What one API process owns while it runs."""

    settings: Settings
    store: Store
    holder: ModelHolder
    batcher: MicroBatcher
    encoder: RequestEncoder
    metrics: ServiceMetrics
    watcher: SwapWatcher
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    scheduler: BackgroundScheduler | None = None
    trainer_store: Store | None = None  # the in-process trainer's

    @property
    def model_config(self) -> ModelConfig:
        """The shapes every served version has (the watcher refuses others)."""
        return self.watcher.config


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a route that reads its body itself (:class:`HotRoutes`): a JSON body, whose
    schema ``create_app``'s ``openapi`` adds under the model's name, with the running limits."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


Rows = tuple[np.ndarray, np.ndarray]  # item rows and their category rows


def encode_predict(rt: Runtime, raw: bytes) -> tuple[str, int, Rows, Rows | None]:
    """A ``/v1/predict`` body as model rows: its user id and row, its candidates' rows, and its
    history's rows if the client sent one. Kept apart from the awaits that follow so that
    nothing of the parsed body lives on while the request waits: objects that outlive a
    collection pile up for the slow ones."""
    query = read_predict(raw)
    user, candidates = rt.encoder.candidates(query)
    history = rt.encoder.client_history(query.history) if query.history is not None else None
    return str(query.user_id), user, candidates, history


async def predict_answer(rt: Runtime, raw: bytes) -> dict[str, Any]:
    """The body of a ``/v1/predict`` answer."""
    user_id, user, candidates, history = encode_predict(rt, raw)
    if history is None:
        length = rt.model_config.history_length
        clicks = await rt.store.recent_clicks_async(user_id, length) if length and rt.holder.current else []
        history = rt.encoder.logged_history(clicks)
    try:
        scores, model = await rt.batcher.score(Encoded(user, *candidates, *history))
    except NoModelError:
        raise HTTPException(503, "no model is loaded yet") from None
    rt.metrics.items_scored.inc(len(scores))
    return {"scores": scores, "model_version": model.version, "period": model.period}


async def interactions_answer(rt: Runtime, raw: bytes) -> dict[str, Any]:
    """Log the events of a ``/v1/interactions`` body; the body of its 202."""
    s = rt.settings
    body = parse_body(raw, InteractionsRequest)
    if len(body.events) > s.max_events:
        raise invalid(["events"], f"at most {s.max_events} events per request", "too_long")
    now = time.time()
    events = [
        Interaction(
            user_id=check_id(e.user_id, ["events", i, "user_id"], s.max_id_length),
            item_id=check_id(e.item_id, ["events", i, "item_id"], s.max_id_length),
            categories=check_categories(e.categories, ["events", i, "categories"], s),
            label=int(e.label),
            timestamp=e.timestamp if e.timestamp is not None else now,
        )
        for i, e in enumerate(body.events)
    ]
    # awaited, never blocking the loop: a stalled store holds up only the requests that wait for it
    period = await rt.store.append_async(events, s.history_length)
    rt.metrics.interactions.inc(len(events))
    return {"accepted": len(events), "period": period}


def create_app(settings: Settings | None = None, store: Store | None = None) -> HotRoutes:
    settings = settings or Settings()
    owns_store = store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        runtime = start_runtime(settings, store or open_store(settings), app.state.metrics)
        app.state.runtime = runtime
        # Every object alive now (modules, the model) lives as long as the process: out of the
        # collector's sight, a full collection scans only what requests left behind; it took
        # 250-330 ms with them, a stall of every request waiting (docs/benchmarks.md).
        gc.freeze()
        try:
            yield
        finally:
            await runtime.store.aclose()
            stop_runtime(runtime, close_store=owns_store)

    app = FastAPI(
        title="asmg-serve",
        summary="CTR scoring with a model that keeps itself up to date with ASMG.",
        version="0.1.0",
        lifespan=lifespan,
        responses={503: {"model": Problem, "description": "No model loaded yet, or the store is unreachable."}},
    )
    metrics = ServiceMetrics()
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)

    def runtime(request: Request) -> Runtime:
        rt: Runtime = request.app.state.runtime
        return rt

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("store error on %s: %s", request.url.path, exc)
        return JSONResponse(STORE_UNAVAILABLE, status_code=503)

    for error in STORE_ERRORS:
        app.add_exception_handler(error, store_unavailable)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        tags=["scoring"],
        responses=ERROR_RESPONSES,
        openapi_extra=json_body(PredictRequest),
    )
    async def predict(request: Request) -> Response:
        """Click probabilities of the candidates for this user, from the serving model.

        The user's history is the client's ``history`` if given, else the
        service's own record of their latest clicks. (Served by :class:`HotRoutes`;
        declared here for the OpenAPI document.)
        """
        answer = await predict_answer(runtime(request), await request.body())
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post(
        "/v1/interactions",
        status_code=202,
        response_model=InteractionsAccepted,
        tags=["logging"],
        responses=ERROR_RESPONSES,
        openapi_extra=json_body(InteractionsRequest),
    )
    async def interactions(request: Request) -> Response:
        """Log impressions and clicks. A 2xx means every event is durably in the log.
        (Served by :class:`HotRoutes`; declared here for the OpenAPI document.)"""
        answer = await interactions_answer(runtime(request), await request.body())
        return Response(orjson.dumps(answer), status_code=202, media_type="application/json")

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """The process is up."""
        return Health()

    @app.get("/readyz", response_model=Ready, tags=["health"], responses={503: {"model": Ready}})
    def readyz(request: Request) -> Any:
        """A model is loaded and the store answers (200, else 503). The body also says whether
        this replica serves the version the registry points at, and how the trainer fares;
        neither changes the status: a replica serving an older version still serves."""
        rt = runtime(request)
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
        return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)

    @app.get(
        "/healthz/trainer",
        response_model=TrainerHealthOut,
        tags=["health"],
        responses={503: {"model": TrainerHealthOut}},
    )
    def trainer_healthz(request: Request) -> Any:
        """200 while the trainer makes progress, 503 once it has shown none for
        ASMG_TRAINER_STALL_SECONDS (dead, hung, cut off from the store, or failing), or the store
        does not answer. For an operator's check; the API serves either way."""
        rt = runtime(request)
        health = trainer_health_out(rt.store.trainer_status(), rt.settings)
        return JSONResponse(health.model_dump(), status_code=200 if health.ok else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus exposition."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(admin_router(settings))

    def openapi() -> dict[str, Any]:
        # the routes that parse their own bodies declare them by reference: the schemas go here, with the
        # limits of these settings, and FastAPI's 422 schema, which their 422s follow (ERROR_RESPONSES)
        if app.openapi_schema is None:
            from fastapi.openapi.utils import validation_error_definition, validation_error_response_definition

            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.setdefault("ValidationError", validation_error_definition)
            components.setdefault("HTTPValidationError", validation_error_response_definition)
            for model in bounded_requests(settings):
                definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[model.__name__] = definition
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    hot: dict[str, tuple[Answer, int]] = {
        "/v1/predict": (predict_answer, 200),
        "/v1/interactions": (interactions_answer, 202),
    }
    return HotRoutes(app, hot, metrics, settings.max_body_bytes)


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


def start_runtime(settings: Settings, store: Store, metrics: ServiceMetrics) -> Runtime:
    holder = ModelHolder()
    metrics.watch_store(store, settings.trainer_stall_seconds)

    def swapped(model: ServedModel) -> None:
        metrics.swaps.inc()
        metrics.model_version.set(model.version)
        metrics.model_period.set(model.period)

    watcher = SwapWatcher(
        store,
        holder,
        settings.model(),
        settings.swap_poll_seconds,
        on_swap=swapped,
        on_failure=lambda version, reason: metrics.load_failures.inc(),
    )
    batcher = MicroBatcher(holder, settings.batch_max_items, settings.batch_wait_ms / 1000, settings.batch_turns)
    rt = Runtime(settings, store, holder, batcher, RequestEncoder(watcher.config, settings), metrics, watcher)
    if settings.admin_token is None:
        log.warning("ASMG_ADMIN_TOKEN is not set: /admin is open (development only)")
    try:
        ensure_initial_model(store, settings)
        watcher.sync()
    except STORE_ERRORS as exc:  # start anyway: /readyz says 503 until the watcher has loaded a model
        log.error("the store is unavailable at start (%s); serving once it answers", exc)
    watcher.start()
    if settings.runs_trainer_in_process:
        # a store of its own: the trainer's calls move whole periods and may wait longer than a request
        rt.trainer_store = open_store(settings, for_trainer=True)
        trainer = PeriodTrainer(rt.trainer_store, settings)
        thread = threading.Thread(
            target=run_supervised,
            args=(rt.trainer_store, settings, rt.stop, trainer, metrics.trainer_restarts.inc),
            name="trainer",
        )
        thread.start()
        rt.threads.append(thread)
        rt.scheduler = start_rollover_schedule(rt.trainer_store, settings, trainer.owner, rt.stop)
    return rt


def stop_runtime(rt: Runtime, close_store: bool) -> None:
    rt.stop.set()
    if rt.scheduler:
        rt.scheduler.shutdown(wait=False)
    rt.watcher.stop()
    for thread in rt.threads:
        thread.join()
    rt.metrics.unwatch_store()
    if rt.trainer_store is not None:
        rt.trainer_store.close()
    if close_store:
        rt.store.close()
