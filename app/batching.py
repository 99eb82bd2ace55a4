"""Requests that arrive together are scored together, in one forward pass.

Each request's handler encodes it, queues it and waits. The first request
into an empty queue opens a batch, which is scored ``turns`` turns of the
event loop later (or after ``max_wait`` seconds if that is set), or at once
when it holds ``max_items`` candidates. Each turn reads whatever requests
have arrived on every connection, so under load batches form by themselves;
a lone request waits for a few empty turns, tens of microseconds, and no
timer. A flush reads the served model once, so every request of a batch is
answered by one version.
"""

from __future__ import annotations

import asyncio

from app.encoding import Encoded
from app.serving import ModelHolder, ServedModel


class NoModelError(RuntimeError):
    """No version is loaded yet."""


class MicroBatcher:
    def __init__(self, holder: ModelHolder, max_items: int, max_wait: float = 0.0, turns: int = 0) -> None:
        self.holder = holder
        self.max_items = max_items
        self.max_wait = max_wait
        self.turns = turns
        self._turns_left = turns
        self._pending: list[tuple[Encoded, asyncio.Future[tuple[list[float], ServedModel]]]] = []
        self._pending_items = 0
        self._flush_handle: asyncio.Handle | None = None

    async def score(self, request: Encoded) -> tuple[list[float], ServedModel]:
        """This request's scores and the version that produced them."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[list[float], ServedModel]] = loop.create_future()
        self._pending.append((request, future))
        self._pending_items += len(request.items)
        if self._pending_items >= self.max_items:
            self._cancel_flush()
            self._flush()
        elif self._flush_handle is None:
            if self.max_wait > 0:
                self._flush_handle = loop.call_later(self.max_wait, self._flush)
            else:
                self._turns_left = self.turns
                self._flush_handle = loop.call_soon(self._turn)
        return await future

    def _turn(self) -> None:
        if self._turns_left > 0:
            self._turns_left -= 1
            self._flush_handle = asyncio.get_running_loop().call_soon(self._turn)
        else:
            self._flush()

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _flush(self) -> None:
        self._flush_handle = None
        batch, self._pending, self._pending_items = self._pending, [], 0
        batch = [(request, future) for request, future in batch if not future.done()]  # a client may have gone
        if not batch:
            return
        model = self.holder.current
        try:
            if model is None:
                raise NoModelError("no model is loaded yet")
            scores = model.score([request for request, _ in batch])
        except Exception as exc:  # every waiting request gets the error, none is left hanging
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), request_scores in zip(batch, scores, strict=True):
            future.set_result((request_scores, model))
