"""The two hot routes, answered straight from ASGI.

FastAPI's middleware, routing and dependency layers cost about a third of a
``/v1/predict`` request's CPU (docs/benchmarks.md). ``POST /v1/predict`` and
``POST /v1/interactions`` are therefore answered here, ahead of them, with
the same handlers, errors (422 naming the field, 413, 415, 503) and metrics
as every other route; everything else goes on to FastAPI, which also keeps
declaring the two routes for the OpenAPI document (:data:`ERROR_RESPONSES`).
Every request they answer is counted, whatever happens while answering it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from app.metrics import ServiceMetrics
from app.schemas import Problem
from app.validation import json_safe

log = logging.getLogger("asmg.api")

Answer = Callable[[Any, bytes], Awaitable[dict[str, Any]]]

# what a store outage raises, and what every route answers for it (503)
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, sqlite3.Error)
STORE_UNAVAILABLE = {"detail": "the store is unavailable; retry later"}
NOT_JSON = "the body must be JSON, sent with Content-Type: application/json"
INTERNAL_ERROR = b'{"detail":"Internal Server Error"}'

# what the two routes answer besides their success, as the OpenAPI document declares it
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "The body is over ASMG_MAX_BODY_BYTES."},
    415: {"model": Problem, "description": "The body's Content-Type is missing or not application/json."},
    422: {
        "description": "The body is not JSON or breaks a rule; each error names its field.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
    },
    503: {
        "model": Problem,
        "description": "Starting up, no model loaded yet, or the store is unreachable.",
    },
}


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


def sends_json(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the request's Content-Type is application/json (parameters such as a charset aside).
    Anything else is refused before the body is read: a page on another origin can post text/plain
    without a CORS preflight, and must not get to log interactions that way."""
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


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
        path = scope["path"]
        started = time.perf_counter()
        payload: Any
        try:
            if not sends_json(scope["headers"]):
                raise HTTPException(415, NOT_JSON)
            runtime = getattr(self.app.state, "runtime", None)
            if runtime is None:
                raise HTTPException(503, "starting up")
            status, payload = success, await answer(runtime, await read_body(receive, self.max_body))
        except ClientGone:
            return
        except RequestValidationError as exc:
            status, payload = 422, {"detail": exc.errors()}
        except HTTPException as exc:
            status, payload = exc.status_code, {"detail": exc.detail}
        except STORE_ERRORS as exc:
            log.error("store error on %s: %s", path, exc)
            status, payload = 503, STORE_UNAVAILABLE
        except Exception:
            log.exception("error on %s", path)
            status, payload = 500, {"detail": "Internal Server Error"}
        try:
            if status == 422:  # echoes what the client sent, integers beyond 64 bits included
                payload = json_safe(jsonable_encoder(payload))
            body = orjson.dumps(payload)
        except Exception:  # a bug, never client input; still an answer, and counted
            log.exception("the answer on %s could not be written", path)
            status, body = 500, INTERNAL_ERROR
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
