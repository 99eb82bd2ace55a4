"""uvicorn servers of the application: in the foreground of an ``asmg serve`` process, or
in a background thread of a program that goes on to use it (``asmg demo``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from app.main import create_app
from app.transport import CoalescingHttpProtocol
from trainer.core.settings import Settings


def uvicorn_server(settings: Settings, **config: Any) -> uvicorn.Server:
    """A server of ``create_app(settings)`` that writes each response in one socket write."""
    return uvicorn.Server(uvicorn.Config(create_app(settings), http=CoalescingHttpProtocol, **config))


def serve_forever(settings: Settings, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM or SIGINT."""
    uvicorn_server(settings, log_level="info", access_log=False).run(sockets=[sock])


@contextmanager
def server_in_thread(settings: Settings, port: int = 0, start_timeout: float = 60.0) -> Iterator[str]:
    """Serve on 127.0.0.1:``port`` (0: any free port) from a thread, started (its lifespan
    run) when this yields its base URL, and stopped on exit."""
    server = uvicorn_server(settings, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
