"""``asmg serve`` as one or several API processes on one port.

Each process binds its own listening socket with SO_REUSEPORT, so the kernel
spreads new connections over them; with one shared socket, as
``uvicorn --workers`` has, one process tends to accept every connection of a
keep-alive client and the others idle. Only the first process runs the
in-process trainer and the rollover schedule. If any process exits, the
others are stopped and ``asmg serve`` exits with its status, for the
supervisor (systemd, Kubernetes) to restart the whole. The processes keep
their metrics in files of one directory, so that a scrape reaching any of
them reports them all (:mod:`app.metrics`): ``PROMETHEUS_MULTIPROC_DIR`` if
set (its owner empties it between runs), else a fresh temporary directory,
removed when they stop.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
from types import FrameType

from trainer.core.settings import Settings

log = logging.getLogger("asmg.serve")


class PortInUse(OSError):
    """Something, perhaps another ``asmg serve``, already listens on the port."""


def _tcp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # old TIME_WAIT connections are no obstacle
    return sock


def ensure_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on. Our own sockets share a port
    through SO_REUSEPORT, so a second ``asmg serve`` on it would bind too and
    silently take half the traffic; a probe without the option cannot."""
    probe = _tcp_socket(host)
    try:
        probe.bind((host, port))
    except OSError as exc:
        raise PortInUse(f"{host}:{port} is already in use ({exc.strerror}); is another asmg serve running?") from None
    finally:
        probe.close()


def listening_socket(host: str, port: int) -> socket.socket:
    sock = _tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve_one(settings: Settings, index: int = 0, metrics_dir: str | None = None) -> None:
    """One API process, serving until SIGTERM or SIGINT; ``metrics_dir``: the
    directory its metrics share with the other processes'."""
    if metrics_dir is not None:  # before prometheus_client is imported: it reads this once
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from app.server import serve_forever

    logging.getLogger("asmg").setLevel(logging.INFO)
    if index > 0:
        settings = settings.model_copy(update={"trainer_in_process": False})
    serve_forever(settings, listening_socket(settings.host, settings.port))


def serve(settings: Settings) -> int:
    """Run ``settings.workers`` API processes; return when they have all stopped."""
    ensure_port_free(settings.host, settings.port)  # before any process starts
    if settings.workers == 1:
        serve_one(settings)
        return 0
    context = multiprocessing.get_context("spawn")  # a clean torch and event loop per process
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = given or tempfile.mkdtemp(prefix="asmg-metrics-")
    processes = [
        context.Process(target=serve_one, args=(settings, i, metrics_dir), name=f"asmg-serve-{i}")
        for i in range(settings.workers)
    ]
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        log.info("serving on %s:%d with %d processes", settings.host, settings.port, settings.workers)
        while not stopping.is_set() and all(p.is_alive() for p in processes):
            stopping.wait(0.5)
        failed = [p for p in processes if not p.is_alive() and p.exitcode]
        if failed:
            log.error("%s exited with status %s; stopping the others", failed[0].name, failed[0].exitcode)
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes its requests and shuts down
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)
