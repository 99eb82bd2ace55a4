"""`asmg serve --workers 2`: two API processes on one port, stopped together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults import wait_ready
from tests.service import free_port

SMALL = {"ASMG_USER_BUCKETS": "512", "ASMG_ITEM_BUCKETS": "512", "ASMG_CATEGORY_BUCKETS": "32", "ASMG_HIDDEN": "8,4"}


def spawned_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``asmg serve --workers 2`` on a free port, ready; killed at the end if still running."""
    port = free_port()
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, **SMALL, "ASMG_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stderr=output)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def scraped(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape of ``/metrics`` on a new connection: value by (sample name, sorted labels)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_two_workers_share_the_port_and_stop_together(
    server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, process = server
    workers = spawned_children(process.pid)
    assert len(workers) == 2
    body = {"user_id": "u", "items": [{"item_id": "a"}, {"item_id": "b"}], "history": ["c"]}
    answers = []
    for _ in range(20):  # a new connection each time: the kernel picks the worker
        with httpx.Client(base_url=url, timeout=10) as client:
            answers.append(client.post("/v1/predict", json=body))
    assert {a.status_code for a in answers} == {200}
    assert len({tuple(a.json()["scores"]) for a in answers}) == 1  # one model, whichever worker answered
    for _ in range(8):  # every scrape, whichever worker answers it, counts both workers' requests
        samples = scraped(url)
        assert samples[("asmg_items_scored_total", ())] == 40
        assert samples[("asmg_http_requests_total", (("route", "/v1/predict"), ("status", "200")))] == 20
        versions = {labels: v for (name, labels), v in samples.items() if name == "asmg_model_version"}
        assert len(versions) == 2 and set(versions.values()) == {1}  # each live worker's, by pid
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not any(Path(f"/proc/{w}").exists() for w in workers)
    assert not list((tmp_path / "tmp").glob("asmg-metrics-*"))  # the workers' metrics directory went with them


def test_a_worker_that_dies_takes_the_server_down(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, process = server
    os.kill(spawned_children(process.pid)[1], signal.SIGKILL)
    assert process.wait(timeout=60) == 1  # the supervisor restarts the whole, never half of it


def test_a_second_server_on_a_served_port_is_refused(tmp_path: Path) -> None:
    # a listener as asmg serve's own: with SO_REUSEPORT, which a second one could silently join
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, **SMALL, "ASMG_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        other.close()
    assert done.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in done.stderr and "Traceback" not in done.stderr
