"""A response's writes of one loop turn leave as one socket write, in order,
and nothing written is lost when the connection closes."""

from __future__ import annotations

import asyncio
import inspect
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.transport import CoalescedTransport, CoalescingHttpProtocol


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
    return transport, theirs


def _read_all(sock: socket.socket) -> bytes:
    """Everything the other end sent, up to its close."""
    with sock:
        sock.setblocking(True)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_writes_of_one_turn_go_out_as_one_in_order() -> None:
    sent: list[bytes] = []

    async def run() -> bytes:
        transport, theirs = await _pair()
        real_write = transport.write
        transport.write = lambda data: (sent.append(bytes(data)), real_write(data))[1]  # type: ignore[method-assign]
        coalesced = CoalescedTransport(transport, asyncio.get_running_loop())
        coalesced.write(b"HTTP/1.1 200 OK\r\n\r\n")
        coalesced.write(b"body")
        assert sent == []  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        coalesced.write(b"-next")
        await asyncio.sleep(0)
        coalesced.close()
        await asyncio.sleep(0)
        return _read_all(theirs)

    received = asyncio.run(run())
    assert sent == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"-next"]
    assert received == b"HTTP/1.1 200 OK\r\n\r\nbody-next"


def test_close_sends_what_is_pending_first() -> None:
    async def run() -> bytes:
        transport, theirs = await _pair()
        coalesced = CoalescedTransport(transport, asyncio.get_running_loop())
        coalesced.write(b"last words")
        coalesced.close()
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the flush scheduled by the write finds nothing left and does nothing
        return _read_all(theirs)

    assert asyncio.run(run()) == b"last words"


# What app/transport.py relies on in uvicorn's private HttpToolsProtocol, checked against the
# installed uvicorn: its constructor's keywords, connection_made(transport) keeping the transport
# it is handed and writing every response through it (head and body, which the wrapper joins),
# and the ``loop`` attribute the wrapper schedules its flush on.


class RecordingTransport:
    """A transport that records each write it passes on."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})


def test_uvicorns_protocol_still_has_the_shape_the_coalescing_protocol_uses() -> None:
    assert list(inspect.signature(HttpToolsProtocol.connection_made).parameters) == ["self", "transport"]
    assert {"config", "server_state", "app_state", "_loop"} <= set(inspect.signature(HttpToolsProtocol).parameters)
    recorded: list[RecordingTransport] = []

    class Recorded(CoalescingHttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            recorded.append(RecordingTransport(transport))
            super().connection_made(recorded[-1])  # type: ignore[arg-type]

    async def two_requests() -> bytes:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(_hello, http=Recorded, lifespan="off", log_level="warning")
        config.load()
        state = ServerState()
        server = await loop.create_server(
            lambda: Recorded(config=config, server_state=state, app_state={}, _loop=loop), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = b""
        for last in (False, True):
            close = b"connection: close\r\n" if last else b""
            writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n" + close + b"\r\n")
            answers += await (reader.read() if last else reader.readuntil(b"hello"))
        writer.close()
        server.close()
        await server.wait_closed()
        return answers

    answers = asyncio.run(two_requests())
    assert answers.count(b"HTTP/1.1 200 OK") == 2 and answers.endswith(b"hello")
    [connection] = recorded
    assert [w.startswith(b"HTTP/1.1 200 OK") and w.endswith(b"\r\n\r\nhello") for w in connection.writes] == [
        True,
        True,
    ]
