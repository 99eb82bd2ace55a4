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
from app.hot import STORE_ERRORS, STORE_UNAVAILABLE, Answer, HotRoutes
from app.metrics import RequestMetrics, ServiceMetrics
from app.schemas import (
    Health,
    InteractionsAccepted,
    InteractionsRequest,
    PredictRequest,
    PredictResponse,
    Problem,
    Ready,
)
from app.serving import ModelHolder, ServedModel, SwapWatcher
from app.validation import check_categories, check_id, invalid, parse_body
from trainer.config import ModelConfig
from trainer.schedule import start_rollover_schedule
from trainer.settings import Settings
from trainer.store import open_store
from trainer.store.base import Interaction, Store
from trainer.worker import PeriodTrainer, ensure_initial_model, run_trainer

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

    @property
    def model_config(self) -> ModelConfig:
        """The shapes every served version has (the watcher refuses others)."""
        return self.watcher.config


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a route that reads its body with :func:`parse_body`."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def encode_predict(rt: Runtime, raw: bytes) -> Encoded:
    """A ``/v1/predict`` body as model rows. Kept apart from the await on the
    batcher so that nothing of the parsed body lives on while the request
    waits: objects that outlive a collection pile up for the slow ones."""
    query = read_predict(raw)
    user, candidates = rt.encoder.candidates(query)
    if query.history is not None:
        history = rt.encoder.client_history(query.history)
    elif rt.model_config.history_length and rt.holder.current is not None:
        history = rt.encoder.logged_history(rt.store.recent_clicks(str(query.user_id), rt.model_config.history_length))
    else:
        history = rt.encoder.logged_history([])
    return Encoded(user, *candidates, *history)


async def predict_answer(rt: Runtime, raw: bytes) -> dict[str, Any]:
    """The body of a ``/v1/predict`` answer."""
    try:
        scores, model = await rt.batcher.score(encode_predict(rt, raw))
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
    # on the event loop, not in a thread: a thread here waits for the GIL behind the loop's CPU work
    # at every socket call, and 1 in 100 appends took 200 ms at 8 connections (docs/benchmarks.md)
    period = rt.store.append(events, s.history_length)
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
        """A model is loaded and the store answers."""
        rt = runtime(request)
        model = rt.holder.current
        ready = Ready(ready=False, model_version=model.version if model else None, store=rt.store.ping())
        ready.ready = model is not None and ready.store
        return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus exposition."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(admin_router(settings))

    def openapi() -> dict[str, Any]:
        # the routes that parse their own bodies declare them by reference; the schemas go here
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (PredictRequest, InteractionsRequest):
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


def start_runtime(settings: Settings, store: Store, metrics: ServiceMetrics) -> Runtime:
    holder = ModelHolder()
    metrics.watch_store(store)

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
    ensure_initial_model(store, settings)
    watcher.sync()
    watcher.start()
    if settings.runs_trainer_in_process:
        trainer = PeriodTrainer(store, settings)
        thread = threading.Thread(target=run_trainer, args=(store, settings, rt.stop, trainer), name="trainer")
        thread.start()
        rt.threads.append(thread)
        rt.scheduler = start_rollover_schedule(store, settings, trainer.owner)
    return rt


def stop_runtime(rt: Runtime, close_store: bool) -> None:
    rt.stop.set()
    if rt.scheduler:
        rt.scheduler.shutdown(wait=False)
    rt.watcher.stop()
    for thread in rt.threads:
        thread.join()
    rt.metrics.unwatch_store()
    if close_store:
        rt.store.close()
