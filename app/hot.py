"""The two hot routes, answered straight from ASGI.

FastAPI's middleware, routing and dependency layers cost about a third of a
``/v1/predict`` request's CPU (docs/benchmarks.md). ``POST /v1/predict`` and
``POST /v1/interactions`` are therefore answered here, ahead of them, with
the same handlers, errors (422 naming the field, 413, 503) and metrics as
every other route; everything else goes on to FastAPI, which also keeps
declaring the two routes for the OpenAPI document.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from app.metrics import ServiceMetrics

log = logging.getLogger("asmg.api")

Answer = Callable[[Any, bytes], Awaitable[dict[str, Any]]]

# what a store outage raises, and what every route answers for it (503)
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, sqlite3.Error)
STORE_UNAVAILABLE = {"detail": "the store is unavailable; retry later"}


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is over {limit} bytes (ASMG_MAX_BODY_BYTES)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class HotRoutes:
    def __init__(
        self, app: FastAPI, routes: dict[str, tuple[Answer, int]], metrics: ServiceMetrics, max_body: int
    ) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        answer, success = route
        started = time.perf_counter()
        try:
            runtime = getattr(self.app.state, "runtime", None)
            if runtime is None:
                raise HTTPException(503, "starting up")
            status, payload = success, await answer(runtime, await read_body(receive, self.max_body))
        except ClientGone:
            return
        except RequestValidationError as exc:
            status, payload = 422, {"detail": jsonable_encoder(exc.errors())}
        except HTTPException as exc:
            status, payload = exc.status_code, {"detail": exc.detail}
        except STORE_ERRORS as exc:
            log.error("store error on %s: %s", scope["path"], exc)
            status, payload = 503, STORE_UNAVAILABLE
        except Exception:
            log.exception("error on %s", scope["path"])
            status, payload = 500, {"detail": "Internal Server Error"}
        body = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels(scope["path"], str(status)).inc()
        self.metrics.latency.labels(scope["path"]).observe(time.perf_counter() - started)
