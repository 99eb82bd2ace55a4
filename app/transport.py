"""One socket write per HTTP response.

uvicorn writes a response's head and its body with a ``transport.write``
each: two system calls and two TCP segments for every small JSON answer.
The protocol here hands uvicorn a transport that gathers the writes made
in one turn of the event loop and sends them together at the start of the
next (or at once, if the connection is closing). Measured in
docs/benchmarks.md.

It subclasses uvicorn's private ``HttpToolsProtocol``, relying on its
constructor's keywords, on ``connection_made(transport)`` keeping the
transport it is handed and writing every response through it, and on its
``loop`` attribute. tests/test_transport.py fails if any of that changes;
it passes with uvicorn 0.30.0 to 0.55.0 (the whole suite runs on 0.55.0).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescedTransport:
    """``transport`` with its writes of one loop turn joined into one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedTransport(transport, self.loop))  # type: ignore[arg-type]
