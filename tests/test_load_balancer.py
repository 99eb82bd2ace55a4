"""deploy/nginx/nginx.conf in front of three `asmg serve` processes on one Redis: requests are
shared out among them, and one replica killed costs no request."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults import wait_ready
from tests.service import free_port

NGINX = Path(__file__).resolve().parents[1] / "deploy" / "nginx"
PREDICT = {"user_id": "u1", "items": [{"item_id": "i1", "categories": ["c1"]}, {"item_id": 7}]}


@pytest.fixture
def replicas(redis_url: str, tmp_path: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASMG_")}
    env.update(
        ASMG_REDIS_URL=redis_url,
        ASMG_TRAINER_IN_PROCESS="false",
        ASMG_USER_BUCKETS="256",
        ASMG_ITEM_BUCKETS="256",
        ASMG_CATEGORY_BUCKETS="16",
        ASMG_HISTORY_LENGTH="5",
    )
    started = []
    for _ in range(3):
        port = free_port()
        with (tmp_path / f"api-{port}.log").open("wb") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
            )
        started.append((f"http://127.0.0.1:{port}", process))
    try:
        for url, process in started:
            wait_ready(url, process, tmp_path / f"api-{url.rsplit(':', 1)[1]}.log")
        yield started
    finally:
        for _, process in started:
            process.kill()
            process.wait()


@pytest.fixture
def balancer(replicas: list[tuple[str, subprocess.Popen[bytes]]], tmp_path: Path) -> Iterator[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    # the deployed configuration, listening on a free port, with these replicas as its upstream
    conf = (NGINX / "nginx.conf").read_text().replace("listen 8000;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {prefix}/nginx.pid;")
    (prefix / "nginx.conf").write_text(conf)
    servers = "".join(f"server {url.removeprefix('http://')} max_fails=1 fail_timeout=5s;\n" for url, _ in replicas)
    (prefix / "upstream.conf").write_text(servers)
    check = subprocess.run([nginx, "-t", "-c", str(prefix / "nginx.conf"), "-p", str(prefix)], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    with (prefix / "stderr.log").open("wb") as log:
        process = subprocess.Popen(
            [nginx, "-c", str(prefix / "nginx.conf"), "-p", str(prefix), "-g", "daemon off;"], stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, prefix / "stderr.log")
        yield url
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(timeout=10)


def predictions_served(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(r'^asmg_http_requests_total\{route="/v1/predict",status="200"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def test_nginx_shares_requests_among_replicas_and_skips_a_dead_one(
    replicas: list[tuple[str, subprocess.Popen[bytes]]], balancer: str
) -> None:
    with httpx.Client(base_url=balancer, timeout=10) as client:
        answers = [client.post("/v1/predict", json=PREDICT) for _ in range(60)]
        assert [a.status_code for a in answers] == [200] * 60
        served = [predictions_served(url) for url, _ in replicas]
        assert sum(served) == 60 and min(served) > 0, served  # every replica took its share

        replicas[2][1].kill()
        replicas[2][1].wait()
        answers = [client.post("/v1/predict", json=PREDICT) for _ in range(30)]
        assert [a.status_code for a in answers] == [200] * 30
        assert sum(predictions_served(url) for url, _ in replicas[:2]) == sum(served[:2]) + 30
