"""Real processes for the fault tests: a redis-server with AOF ``always``, ``asmg`` commands, and
clients that remember exactly what the service acknowledged."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.service import AUTH, free_port

ROOT = Path(__file__).resolve().parent.parent

# a small model that trains slowly enough (many epochs) for a kill to land in the middle of a period
SERVICE_ENV = {
    "ASMG_USER_BUCKETS": "512",
    "ASMG_ITEM_BUCKETS": "512",
    "ASMG_CATEGORY_BUCKETS": "32",
    "ASMG_HISTORY_LENGTH": "5",
    "ASMG_HIDDEN": "8,4",
    "ASMG_BATCH_SIZE": "32",
    "ASMG_LR": "0.01",
    "ASMG_META_LR": "0.01",
    "ASMG_ADMIN_TOKEN": AUTH["Authorization"].removeprefix("Bearer "),
    "ASMG_SWAP_POLL_SECONDS": "0.5",
    "ASMG_TRAINER_POLL_SECONDS": "0.1",
    "ASMG_KEEP_VERSIONS": "100",
    "ASMG_STORE_TIMEOUT_SECONDS": "1",
    "ASMG_TRAINER_STORE_TIMEOUT_SECONDS": "5",
    "ASMG_TRAINER_RETRY_MAX_SECONDS": "2",
    "ASMG_TRAINER_NICE": "0",
}


class RedisServer:
    """A redis-server of the test's own on a free loopback port; with ``aof``, one that logs
    every write to its append-only file before answering it, and comes back with it."""

    def __init__(self, directory: Path, aof: bool = True, extra: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH; the tests need a real Redis (apt-get install redis-server)"
        self.binary = binary
        self.directory = directory
        self.aof = aof
        self.extra = list(extra)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, seconds: float = 20.0) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        command += [*self.extra, "--save", ""]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            code = self.process.poll()
            assert code is None, f"redis-server exited with code {code} before answering on port {self.port}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not answer PING on port {self.port} within {seconds:.0f} s")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RedisClusterServers:
    """A Redis Cluster of ``masters`` redis-servers in cluster mode on loopback, no replicas,
    joined by ``redis-cli --cluster create`` (16384 slots spread over the masters)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        # the bus port is set apart: its default, port + 10000, may be taken or out of range
        cluster_mode = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        cluster_mode += ["--cluster-node-timeout", "2000"]
        self.servers = [
            RedisServer(directory / f"node{i}", aof=False, extra=[*cluster_mode, "--cluster-port", str(free_port())])
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """Any one node's URL: the cluster client discovers the rest from it."""
        return self.servers[0].url

    def start(self, seconds: float = 30.0) -> None:
        for server in self.servers:
            server.start(seconds)
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not on PATH (apt-get install redis-tools)"
        nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=seconds)
        assert done.returncode == 0, f"redis-cli --cluster create failed: {done.stdout}{done.stderr}"
        deadline = time.monotonic() + seconds
        while not all(self._ready(server) for server in self.servers):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.1)

    @staticmethod
    def _ready(server: RedisServer) -> bool:
        with redis.Redis(port=server.port) as client:
            info: Any = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text

    def close(self) -> None:
        for server in self.servers:
            server.close()


class RedisSentinels:
    """A primary, one replica of it, and ``sentinels`` Sentinels watching it as ``service``
    (quorum 2, the primary judged down after ``down_after_ms``), all on loopback."""

    def __init__(self, directory: Path, sentinels: int = 3, down_after_ms: int = 1000, service: str = "asmg") -> None:
        self.directory = directory
        self.service = service
        self.down_after_ms = down_after_ms
        self.primary = RedisServer(directory / "primary", aof=False)
        self.replica = RedisServer(directory / "replica", aof=False)
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, seconds: float = 30.0) -> None:
        self.primary.start(seconds)
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start(seconds)
        for i, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
            binary = self.primary.binary
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        deadline = time.monotonic() + seconds
        while not (
            self._replicating() and all(self.primary_port(port) == self.primary.port for port in self.sentinel_ports)
        ):
            assert time.monotonic() < deadline, "the Sentinels and the replica did not come up"
            time.sleep(0.1)

    def _replicating(self) -> bool:
        with redis.Redis(port=self.replica.port) as client:
            return client.info("replication").get("master_link_status") == "up"

    def primary_port(self, sentinel_port: int | None = None) -> int | None:
        """The primary's port as a Sentinel names it (None while it cannot be asked)."""
        try:
            with redis.Redis(port=sentinel_port or self.sentinel_ports[0], socket_timeout=1) as client:
                address: Any = client.execute_command("SENTINEL", "get-master-addr-by-name", self.service)
        except redis.RedisError:
            return None
        return None if not address else int(address[1])

    def close(self) -> None:
        for process in self.sentinels:
            process.terminate()
        for process in self.sentinels:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.replica.close()
        self.primary.close()


class Command:
    """One ``asmg`` command as its own process (``python -m app.cli ...``), with its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = {**os.environ, **env}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.args], env=self.env, cwd=ROOT, stdout=output, stderr=output
            )

    def wait_ready(self, url: str) -> None:
        assert self.process is not None
        wait_ready(url, self.process, self.log)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    """Until ``url`` answers /readyz with 200; fails with the log's tail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-4000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready\n{log.read_text()[-4000:]}")


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.TransportError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Traffic(threading.Thread):
    """Posts batches of uniquely numbered events (item ids ``e<n>``) and scoring requests, one
    after the other, never retrying; keeps what was acknowledged and every answer it got."""

    def __init__(self, url: str, batch: int = 10, pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.batch = batch
        self.pause = pause  # between rounds: a few hundred events a second, so periods train in seconds
        self.sent = 0
        self.acknowledged: set[str] = set()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.answers: list[tuple[float, float, str, int | str]] = []  # (start, seconds, route, status or error)
        self.served_versions: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                events = [self.event(self.sent + k) for k in range(self.batch)]
                self.sent += self.batch
                self.call(client, "/v1/interactions", {"events": events}, {e["item_id"] for e in events})
                self.call(client, "/v1/predict", {"user_id": f"u{self.sent % 37}", "items": [{"item_id": "e1"}]})
                self.stop.wait(self.pause)

    @staticmethod
    def event(n: int) -> dict[str, Any]:
        return {"user_id": f"u{n % 37}", "item_id": f"e{n}", "categories": [f"c{n % 5}"], "label": int(n % 3 == 0)}

    def call(self, client: httpx.Client, route: str, body: dict[str, Any], ids: set[str] | None = None) -> None:
        started = time.monotonic()
        try:
            response = client.post(route, json=body)
        except httpx.TransportError as exc:
            self.record(started, route, type(exc).__name__)
            return
        self.record(started, route, response.status_code)
        if response.status_code == 202 and ids:
            self.acknowledged |= ids
        if response.status_code == 200:
            self.served_versions.add(int(response.json()["model_version"]))

    def record(self, started: float, route: str, outcome: int | str) -> None:
        self.answers.append((started, time.monotonic() - started, route, outcome))
        self.statuses[f"{route} {outcome}"] += 1

    def finish(self) -> None:
        self.stop.set()
        self.join(30)

    def between(self, start: float, end: float) -> list[tuple[float, int | str]]:
        """(seconds, outcome) of the requests sent between two moments."""
        return [(seconds, outcome) for at, seconds, _, outcome in self.answers if start <= at < end]


def admin(url: str, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", headers=AUTH, timeout=30)


def trainer_status(url: str) -> dict[str, Any]:
    status: dict[str, Any] = admin(url, "GET", "/admin/status").json()
    return status


def roll_over(url: str) -> int:
    response = admin(url, "POST", "/admin/rollover")
    assert response.status_code == 200, response.text
    return int(response.json()["closed_period"])


def trained(url: str, period: int) -> bool:
    return int(trainer_status(url)["trained_through"]) >= period


def training(url: str, period: int) -> bool:
    trainer = trainer_status(url)["trainer"]
    return trainer.get("state") == "training" and trainer.get("period") == period


def first_period(url: str) -> int:
    """Close the first period after a second of traffic, and wait until it is trained."""
    time.sleep(1.0)
    period = roll_over(url)
    wait_until(lambda: trained(url, period), 60, f"period {period} trained")
    return period


def kill_mid_period(url: str, trainer: Command) -> tuple[int, float]:
    """After a second of traffic, close a period, ``kill -9`` the process that trains it in the
    middle of training and start it again; the period, and the seconds from the new start to
    the period trained."""
    time.sleep(1.0)
    period = roll_over(url)
    wait_until(lambda: training(url, period), 60, f"period {period} in training")
    trainer.kill()
    restarted = time.monotonic()
    trainer.start()
    wait_until(lambda: trained(url, period), 90, f"period {period} trained after the kill")
    return period, time.monotonic() - restarted
