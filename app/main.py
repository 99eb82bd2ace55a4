"""The HTTP application of one API process: its routes, their document, and its runtime."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch

from app.admin import admin_routes
from app.api import api_routes
from app.dispatch import Dispatcher
from app.metrics import ServiceMetrics
from app.openapi import document_routes, openapi_document
from app.routing import RouteTable
from app.runtime import Runtime, start_runtime, stop_runtime
from app.status_page import status_routes
from trainer.core.settings import Settings
from trainer.core.store import open_store
from trainer.core.store.base import Store

TITLE = "asmg-serve"
INFO = {
    "title": TITLE,
    "summary": "CTR scoring with a model that keeps itself up to date with ASMG.",
    "version": "0.1.0",
}


def create_app(settings: Settings | None = None, store: Store | None = None) -> Dispatcher:
    """The ASGI application; it opens ``store`` (else the settings' own) when the server starts."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def running() -> AsyncIterator[Runtime]:
        torch.set_num_threads(settings.torch_threads)
        runtime = start_runtime(settings, store or open_store(settings), metrics)
        # Every object alive now (modules, the model) lives as long as the process: out of the
        # collector's sight, a full collection scans only what requests left behind; it took
        # 250-330 ms with them, a stall of every request waiting (docs/benchmarks.md).
        gc.freeze()
        try:
            yield runtime
        finally:
            await runtime.store.aclose()
            stop_runtime(runtime, close_store=store is None)

    routes = [*api_routes(settings), *admin_routes(settings)]
    routes += document_routes(openapi_document(routes, INFO), TITLE) + status_routes()
    return Dispatcher(RouteTable(routes), metrics, settings.max_body_bytes, running)
