"""The ASGI application: every request, from the route table to its answer.

Each request goes through the same few steps, with nothing else in the way
(no middleware, no dependency injection: a framework's layers cost about a
third of a ``/v1/predict`` request's CPU, docs/benchmarks.md): find the route,
check its guard, read its path parameters and its JSON body (415 for another
Content-Type, before reading it, so that a page on another origin cannot post
without a CORS preflight; 413 over the size limit; 422 naming the field),
run its handler (a blocking one in a worker thread), write the answer. Any
exception becomes its answer in :func:`app.errors.error_answer`, and every
request answered is counted and timed by route and status, whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import msgspec
from prometheus_client import Counter, Histogram

from app.decoding import decode_param
from app.errors import NOT_JSON, HTTPError, error_answer
from app.metrics import ServiceMetrics
from app.routing import Answer, Route, RouteTable

log = logging.getLogger("asmg.api")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
Lifespan = Callable[[], AbstractAsyncContextManager[Any]]  # yields what handlers get as their runtime

JSON_TYPE = b"application/json"
INTERNAL_ERROR = b'{"detail":"Internal Server Error"}'
UNMATCHED = "unmatched"  # the metrics' route label for paths no route has
ROUTE_THREADS = 40  # blocking handlers at once (a stalled store holds each for its timeout)


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


class Dispatcher:
    def __init__(self, routes: RouteTable, metrics: ServiceMetrics, max_body: int, lifespan: Lifespan) -> None:
        self.routes = routes
        self.metrics = metrics
        self.max_body = max_body
        self.lifespan = lifespan
        self.runtime: Any = None  # while serving: what the lifespan yielded
        self._encode = msgspec.json.Encoder().encode
        self._threads = ThreadPoolExecutor(ROUTE_THREADS, thread_name_prefix="asmg-route")
        # prometheus_client's labels() takes a lock and checks its arguments: once per series, not per request
        self._counters: dict[tuple[str, int], Counter] = {}
        self._timers: dict[str, Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        label = None
        headers: list[tuple[bytes, bytes]]
        try:
            route, params = self.routes.match(scope["method"], scope["path"])
            label = route.path
            status, payload = await self._run(route, params, scope, receive)
            body = payload if type(payload) is bytes else self._encode(payload)
            headers = [(b"content-type", route.content_type), (b"content-length", str(len(body)).encode())]
        except ClientGone:
            return
        except Exception as exc:
            label = label or self.routes.template(scope["path"]) or UNMATCHED
            status, body, headers = self._error(exc, scope["path"])
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self._count(label, status, time.perf_counter() - started)

    async def _run(self, route: Route, params: Mapping[str, str], scope: Scope, receive: Receive) -> tuple[int, Any]:
        runtime = self.runtime
        if runtime is None:
            raise HTTPError(503, "starting up")
        if route.guard is not None:
            route.guard.check(scope["headers"])
        args = [runtime]
        for name, param in route.params.items():
            args.append(decode_param(params[name], param, ("path", name)))
        if route.decoder is not None:
            if not sends_json(scope["headers"]):
                raise HTTPError(415, NOT_JSON)
            args.append(route.decoder.decode(await read_body(receive, self.max_body)))
        if route.blocking:
            result = await asyncio.get_running_loop().run_in_executor(self._threads, partial(route.handler, *args))
        else:
            result = await route.handler(*args)
        if type(result) is Answer:
            return result.status, result.body
        return route.status, result

    def _error(self, exc: Exception, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        status, problem, extra = error_answer(exc, path)
        try:
            body = self._encode(problem)
        except Exception:  # a bug, never client input; still an answer
            log.exception("the answer on %s could not be written", path)
            status, body, extra = 500, INTERNAL_ERROR, ()
        return status, body, [(b"content-type", JSON_TYPE), (b"content-length", str(len(body)).encode()), *extra]

    def _count(self, label: str, status: int, seconds: float) -> None:
        counter = self._counters.get((label, status))
        if counter is None:
            counter = self._counters[label, status] = self.metrics.requests.labels(label, str(status))
        timer = self._timers.get(label)
        if timer is None:
            timer = self._timers[label] = self.metrics.latency.labels(label)
        counter.inc()
        timer.observe(seconds)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        running = self.lifespan()
        try:
            self.runtime = await running.__aenter__()
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self.runtime = None
        try:
            await running.__aexit__(None, None, None)
            self._threads.shutdown(wait=False)
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def sends_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request's Content-Type is application/json (parameters such as a charset aside)."""
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
            raise HTTPError(413, f"the body is over {limit} bytes (ASMG_MAX_BODY_BYTES)")
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)
