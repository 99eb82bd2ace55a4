"""Every answer other than a route's success, in one place: what raises it, the status and
body it becomes (:func:`error_answer`), and how the document declares it."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from msgspec import Struct
from redis.exceptions import RedisError

from app.batching import NoModelError
from app.decoding import Invalid
from app.schemas import InvalidRequest, Problem

log = logging.getLogger("asmg.api")

Headers = Sequence[tuple[bytes, bytes]]

# what a store outage raises: every route answers it with a 503
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, sqlite3.Error)
STORE_UNAVAILABLE = "the store is unavailable; retry later"
NOT_JSON = "the body must be JSON, sent with Content-Type: application/json"


class HTTPError(Exception):
    """An answer with this status and ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str, headers: Headers = ()) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def error_answer(exc: Exception, path: str) -> tuple[int, Struct, Headers]:
    """The status, body and extra headers that answer a request whose handling raised ``exc``."""
    if isinstance(exc, Invalid):
        return 422, InvalidRequest(exc.errors), ()
    if isinstance(exc, HTTPError):
        return exc.status, Problem(exc.detail), exc.headers
    if isinstance(exc, NoModelError):
        return 503, Problem("no model is loaded yet"), ()
    if isinstance(exc, STORE_ERRORS):
        log.error("store error on %s: %s", path, exc)
        return 503, Problem(STORE_UNAVAILABLE), ()
    log.error("error on %s", path, exc_info=exc)
    return 500, Problem("Internal Server Error"), ()
