"""A response's writes of one loop turn leave as one socket write, in order,
and nothing written is lost when the connection closes."""

from __future__ import annotations

import asyncio
import socket

from app.transport import CoalescedTransport


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
