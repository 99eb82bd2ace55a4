"""Freshness across replicas: from the trainer's commit of a version to every API replica serving it.

Starts one redis-server, one ``asmg trainer`` and ``--replicas`` ``asmg serve`` processes, each on
its own loopback port, behind nginx running ``deploy/nginx/nginx.conf`` (its listen address, pid
file and upstream rewritten for this run, as tests/test_load_balancer.py does), and keeps a steady
``/v1/predict`` load on nginx from a process of its own. Then, for each period: posts the period's interactions through
nginx, ``POST /admin/rollover`` through nginx, and waits until every replica serves the version the
trainer commits. The model is small (``tests/service.py``'s sizes), so a period trains in well
under a second; the replicas keep the service's default ``ASMG_SWAP_POLL_SECONDS`` unless
``--swap-poll`` names one.

When things happen, all on this machine's clock:

- **commit**: when this script's own subscriber to the swap channel (``{prefix}:swaps``) receives
  the version's notice. The commit script publishes it as its last step, in the same atomic step
  that moves the pointer, so it is the commit as any subscriber sees it. The version's ``created``
  (its metadata, which replicas export as ``asmg_model_published_timestamp_seconds``) is the
  trainer's clock when it drafted the version, before it sent the commit: earlier by the transfer
  of the weights and trainer state; the gap is reported (``created_to_commit``).
- **served**: each replica's ``asmg_model_swapped_timestamp_seconds``, its own clock right after
  the reference swap, read from its ``/metrics`` once it serves the version. As a cross-check,
  a poller asks every replica directly (not through nginx) every ``--poll-ms`` for a score with a
  client-supplied history (no store call) and keeps the first answer from the new version; the
  swap lies between the last old answer's request and that answer (``poll_brackets_swap``).

Before each rollover the script waits a random 0 to ``--max-gap`` seconds. ``--drop-notices K``
(default 1) adds a second phase of as many periods in which the first K replicas lose
every swap notice: their connection to Redis runs through a proxy in this script that drops the
pub/sub ``message`` frames (and nothing else) while the phase lasts, so they find each version by
their periodic check only, as a replica does whose subscription was reconnecting when the notice
went out. In that phase the wait is a random 0 to ``ASMG_SWAP_POLL_SECONDS``, so the commits land
at every point of the replicas' check cycle. The JSON's ``lost_notice`` holds that phase's figures.

Requests through nginx and the direct polls are counted; any non-2xx answer or connection error
is a failed request. Prints a summary; the last line is the path of the JSON written (every
period's row, the settings, and the p50/p99/max figures).

    python benchmarks/freshness.py                # 3 replicas, 100 periods, then 100 with one losing notices
    python benchmarks/freshness.py --replicas 4 --periods 50 --drop-notices 0
    python benchmarks/freshness.py --swap-poll 5 --periods 30 --out results/freshness-poll-5.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from harness import ROOT, free_port

TOKEN = "freshness-benchmark"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "fresh"
NGINX = ROOT / "deploy" / "nginx" / "nginx.conf"

# tests/service.py's small model: a period of a few hundred events trains in well under a second
MODEL_ENV = {
    "ASMG_USER_BUCKETS": "256",
    "ASMG_ITEM_BUCKETS": "256",
    "ASMG_CATEGORY_BUCKETS": "16",
    "ASMG_HISTORY_LENGTH": "5",
    "ASMG_BATCH_SIZE": "32",
    "ASMG_LR": "0.01",
    "ASMG_META_LR": "0.01",
    "ASMG_TRAINER_POLL_SECONDS": "0.05",
    "ASMG_KEEP_VERSIONS": "20",
}


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p99 (linear interpolation between ranks) and max; None when there are none."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


# -- processes ----------------------------------------------------------------------------------


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(directory: Path, logs: Path) -> tuple[Proc, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    proc = Proc("redis", [*argv, "--appendonly", "no", "--save", ""], dict(os.environ), logs)
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        proc.check()
        try:
            if client.ping():
                client.close()
                return proc, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def wait_ready(url: str, proc: Proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} at {url} was not ready within {timeout:g} s; see {proc.log}")


def start_nginx(replicas: list[str], directory: Path, logs: Path) -> tuple[Proc, str]:
    """deploy/nginx/nginx.conf on a free loopback port, with ``replicas`` as its upstream."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    directory.mkdir()
    conf = NGINX.read_text()
    for old, new in (
        ("listen 8000;", f"listen 127.0.0.1:{port};"),
        ("pid /tmp/nginx.pid;", f"pid {directory}/nginx.pid;"),
    ):
        if old not in conf:
            raise RuntimeError(f"{NGINX} no longer holds {old!r}: update this benchmark")
        conf = conf.replace(old, new)
    (directory / "nginx.conf").write_text(conf)
    # as the deployed upstream.conf, one line per replica
    servers = "".join(f"server {url.removeprefix('http://')} max_fails=1 fail_timeout=5s;\n" for url in replicas)
    (directory / "upstream.conf").write_text(servers)
    argv = [binary, "-c", str(directory / "nginx.conf"), "-p", str(directory)]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(check.stderr)
    proc = Proc("nginx", [*argv, "-g", "daemon off;"], dict(os.environ), logs)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


# -- a proxy that can lose the swap notices of the replicas behind it ----------------------------

SUBSCRIBE = re.compile(rb"\$9\r\nsubscribe\r\n", re.IGNORECASE)
NOTICE = (b"*3\r\n$7\r\nmessage\r\n", b">3\r\n$7\r\nmessage\r\n")  # a pub/sub message, RESP2 or RESP3


def frame_end(buf: bytes, pos: int) -> int | None:
    """Where the RESP frame that starts at ``pos`` ends, or None while it is incomplete."""
    line = buf.find(b"\r\n", pos)
    if line < 0:
        return None
    kind = buf[pos : pos + 1]
    if kind in (b"+", b"-", b":", b"_", b",", b"#", b"("):
        return line + 2
    size = int(buf[pos + 1 : line])
    if kind in (b"$", b"=", b"!"):
        stop = line + 2 + max(size, 0) + (2 if size >= 0 else 0)
        return stop if stop <= len(buf) else None
    if kind in (b"*", b">", b"~", b"%", b"|"):
        at = line + 2
        for _ in range(max(size, 0) * (2 if kind in (b"%", b"|") else 1)):
            after = frame_end(buf, at) if at < len(buf) else None
            if after is None:
                return None
            at = after
        return at
    raise ValueError(f"not a RESP frame: {buf[pos : pos + 32]!r}")


def run_proxy(listen: int, upstream: int, dropping: Synchronized, dropped: Synchronized, stop: EventType) -> None:
    """Forward 127.0.0.1:listen to Redis on 127.0.0.1:upstream; on a connection that subscribed,
    drop the pub/sub messages Redis sends while ``dropping`` is set (counted in ``dropped``)."""

    async def pipe_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subscribed: list[bool]) -> None:
        while data := await reader.read(1 << 16):
            if SUBSCRIBE.search(data):
                subscribed[0] = True
            writer.write(data)
            await writer.drain()

    async def pipe_down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subscribed: list[bool]) -> None:
        pending = b""
        while data := await reader.read(1 << 16):
            if not subscribed[0]:
                writer.write(data)
            else:
                pending += data
                kept, pos = [], 0
                while pos < len(pending) and (end := frame_end(pending, pos)) is not None:
                    frame = pending[pos:end]
                    if dropping.value and frame.startswith(NOTICE):
                        with dropped.get_lock():
                            dropped.value += 1
                    else:
                        kept.append(frame)
                    pos = end
                pending = pending[pos:]
                writer.write(b"".join(kept))
            await writer.drain()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_w.close()
            return
        subscribed = [False]
        tasks = [
            asyncio.create_task(pipe_up(client_r, server_w, subscribed)),
            asyncio.create_task(pipe_down(server_r, client_w, subscribed)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for w in (client_w, server_w):
                w.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        async with server:
            while not stop.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(serve())


# -- the steady load -----------------------------------------------------------------------------


def run_load(url: str, threads: int, rate: float, stop: EventType, out: str) -> None:
    """``rate`` /v1/predict requests a second through ``url`` from ``threads`` threads, paced
    (an open loop that never catches up more than a second), until ``stop``; counts into ``out``."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()

    def worker(index: int) -> None:
        interval = threads / rate
        due = time.monotonic() + index * interval / threads
        n = index
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                body = {"user_id": str(n % 40), "items": [{"item_id": str((n + k) % 50)} for k in range(5)]}
                n += threads
                sent = time.monotonic()
                try:
                    status = str(client.post("/v1/predict", json=body).status_code)
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                with lock:
                    outcomes[status] += 1
                    latencies.append(time.monotonic() - sent)
                due = max(due + interval, time.monotonic() - 1.0)
                stop.wait(max(0.0, due - time.monotonic()))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.monotonic() - started
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    summary = {
        "requests": sum(outcomes.values()),
        "failed": sum(n for status, n in outcomes.items() if not status.startswith("2")),
        "outcomes": dict(outcomes),
        "seconds": seconds,
        "rate": sum(outcomes.values()) / seconds,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))},
    }
    Path(out).write_text(json.dumps(summary))


# -- watching: the commits, and what each replica serves -----------------------------------------


class Commits(threading.Thread):
    """This script's own subscriber to the swap channel: when each version's notice arrived."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.pubsub = redis.Redis(host="127.0.0.1", port=port).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"{PREFIX}:swaps")
        self.seen: dict[int, float] = {}
        self.changed = threading.Condition()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                at = time.time()
                with self.changed:
                    self.seen.setdefault(int(message["data"]), at)
                    self.changed.notify_all()

    def wait(self, version: int, timeout: float) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: version in self.seen, timeout):
                raise RuntimeError(f"no swap notice for version {version} within {timeout:g} s")
            return self.seen[version]


@dataclass
class Sighting:
    before: float  # when the last request answered by an older version was sent
    after: float  # when the first answer from the awaited version (or a newer one) arrived
    version: int


POLL_BODY = {"user_id": "poller", "items": [{"item_id": "1"}], "history": []}  # scored without a store call


@dataclass
class Poller:
    """Asks one replica directly, every ``interval`` seconds while armed, which version scores."""

    url: str
    interval: float
    failures: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    target: int = 0
    sighting: Sighting | None = None
    armed: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    closing: bool = False

    def arm(self, version: int) -> None:
        self.target, self.sighting = version, None
        self.done.clear()
        self.armed.set()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.closing:
                if not self.armed.wait(0.2):
                    continue
                before = time.time()
                while self.armed.is_set() and not self.closing:
                    sent = time.time()
                    self.requests += 1
                    try:
                        response = client.post("/v1/predict", json=POLL_BODY)
                        arrived = time.time()
                        version = int(response.json()["model_version"]) if response.status_code == 200 else -1
                    except Exception as exc:  # counted; the poller goes on
                        self.failures[type(exc).__name__] += 1
                        response, version = None, -1
                    if response is not None and response.status_code != 200:
                        self.failures[str(response.status_code)] += 1
                    elif response is not None:
                        if version >= self.target:
                            self.sighting = Sighting(before, arrived, version)
                            self.armed.clear()
                            self.done.set()
                            break
                        before = sent
                    time.sleep(max(0.0, self.interval - (time.time() - sent)))


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    if found is None:
        raise RuntimeError(f"{name} is not in the exposition")
    return float(found.group(1))


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Counts:
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def call(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        self.requests += 1
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.failures[f"{method} {path} {type(exc).__name__}"] += 1
            return None
        if not response.is_success:
            self.failures[f"{method} {path} {response.status_code}"] += 1
        return response


def period_events(periods: int, per_period: int, seed: int) -> list[list[dict[str, Any]]]:
    from trainer.research.synthetic import synthetic_events

    table = synthetic_events(n_users=40, n_items=50, n_periods=periods, events_per_period=per_period, seed=seed)
    events = [
        {
            "user_id": str(table.user[i]),
            "item_id": str(table.item[i]),
            "categories": list(table.categories[i]),
            "label": int(table.label[i]),
        }
        for i in range(len(table))
    ]
    return [events[p * per_period : (p + 1) * per_period] for p in range(periods)]


@contextmanager
def processes(args: argparse.Namespace, scratch: Path) -> Iterator[dict[str, Any]]:
    """Redis, the trainer, the replicas (the first ``--drop-notices`` behind the proxy), nginx and the load."""
    logs = scratch / "logs"
    logs.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ExitStack() as stack:
        redis_proc, redis_port = start_redis(scratch, logs)
        stack.callback(redis_proc.stop)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASMG_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(MODEL_ENV, ASMG_KEY_PREFIX=PREFIX, ASMG_ADMIN_TOKEN=TOKEN, ASMG_TRAINER_IN_PROCESS="false")
        if args.swap_poll is not None:
            env["ASMG_SWAP_POLL_SECONDS"] = str(args.swap_poll)
        direct = f"redis://127.0.0.1:{redis_port}/0"

        dropping, dropped, stop_proxy = ctx.Value("b", 0), ctx.Value("i", 0), ctx.Event()
        proxy_url = direct
        if args.drop_notices:
            proxy_port = free_port()
            proxy = ctx.Process(target=run_proxy, args=(proxy_port, redis_port, dropping, dropped, stop_proxy))
            proxy.start()
            stack.callback(proxy.kill)
            stack.callback(proxy.join, 5)
            stack.callback(stop_proxy.set)
            proxy_url = f"redis://127.0.0.1:{proxy_port}/0"

        trainer = Proc("trainer", [sys.executable, "-m", "app.cli", "trainer"], {**env, "ASMG_REDIS_URL": direct}, logs)
        stack.callback(trainer.stop)
        replicas: list[tuple[str, Proc]] = []
        for i in range(args.replicas):
            port = free_port()
            url = proxy_url if i < args.drop_notices else direct
            argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
            proc = Proc(f"api-{i}", argv, {**env, "ASMG_REDIS_URL": url}, logs)
            stack.callback(proc.stop)
            replicas.append((f"http://127.0.0.1:{port}", proc))
        for url, proc in replicas:
            wait_ready(url, proc)
        nginx, lb = start_nginx([url for url, _ in replicas], scratch / "nginx", logs)
        stack.callback(nginx.stop, signal.SIGQUIT)

        stop_load = ctx.Event()
        load_out = scratch / "load.json"
        load = ctx.Process(target=run_load, args=(lb, args.load_threads, args.load_rate, stop_load, str(load_out)))
        yield {
            "redis_port": redis_port,
            "replicas": replicas,
            "trainer": trainer,
            "nginx": nginx,
            "lb": lb,
            "load": load,
            "stop_load": stop_load,
            "load_out": load_out,
            "dropping": dropping,
            "dropped": dropped,
        }


def one_period(
    phase: str,
    events: list[dict[str, Any]],
    lb: httpx.Client,
    counts: Counts,
    commits: Commits,
    pollers: list[Poller],
    metrics_clients: list[httpx.Client],
    store: Any,
) -> dict[str, Any]:
    if counts.call(lb, "POST", "/v1/interactions", json={"events": events}) is None:
        raise RuntimeError("could not post the period's interactions")
    version = (store.pointer().version or 0) + 1
    for poller in pollers:
        poller.arm(version)
    rollover_at = time.time()
    answer = counts.call(lb, "POST", "/admin/rollover", headers=AUTH)
    if answer is None or answer.status_code != 200:
        raise RuntimeError(f"rollover failed: {answer.text if answer is not None else 'no answer'}")
    commit_at = commits.wait(version, 120)
    for poller in pollers:
        if not poller.done.wait(120):
            try:
                ready = httpx.get(f"{poller.url}/readyz", timeout=5).text
            except httpx.TransportError as exc:
                ready = repr(exc)
            raise RuntimeError(
                f"{poller.url} did not serve version {version} within 120 s; /readyz: {ready}; "
                f"its poller's failures: {dict(poller.failures)}"
            )
    info = store.version(version)
    swapped, published = [], []
    for client in metrics_clients:
        text = counts.call(client, "GET", "/metrics")
        assert text is not None
        served = int(metric(text.text, "asmg_model_version"))
        if served != version:
            raise RuntimeError(f"{client.base_url} serves version {served}, not {version}: a newer one came early")
        swapped.append(metric(text.text, "asmg_model_swapped_timestamp_seconds"))
        published.append(metric(text.text, "asmg_model_published_timestamp_seconds"))
    sightings = [p.sighting for p in pollers]
    assert all(s is not None and s.version == version for s in sightings), sightings
    return {
        "phase": phase,
        "version": version,
        "period": int(answer.json()["closed_period"]),
        "rollover_at": rollover_at,
        "created": info.created,
        "commit_at": commit_at,
        "swapped_at": swapped,
        "poll_before": [s.before for s in sightings if s],
        "poll_after": [s.after for s in sightings if s],
        "published_matches_created": all(p == info.created for p in published),
        "rollover_to_commit_s": commit_at - rollover_at,
        "created_to_commit_s": commit_at - info.created,
        "commit_to_served_s": [t - commit_at for t in swapped],
        "commit_to_all_served_s": max(swapped) - commit_at,
        "rollover_to_all_served_s": max(swapped) - rollover_at,
        "commit_to_all_polled_s": max(s.after for s in sightings if s) - commit_at,
        "poll_brackets_swap": [s.before <= t <= s.after for s, t in zip(sightings, swapped, strict=True) if s],
    }


def summarise(rows: list[dict[str, Any]], lost: int) -> dict[str, Any]:
    out: dict[str, Any] = {"periods": len(rows)}
    for key in ("commit_to_all_served", "rollover_to_all_served", "commit_to_all_polled", "created_to_commit"):
        for stat, value in quantiles([r[f"{key}_s"] for r in rows]).items():
            out[f"{key}_{stat}_s"] = value
    each = [t for r in rows for t in r["commit_to_served_s"]]
    for stat, value in quantiles(each).items():
        out[f"commit_to_each_served_{stat}_s"] = value
    if lost:
        for name, picked in (("lost_notice", slice(0, lost)), ("with_notice", slice(lost, None))):
            values = [t for r in rows for t in r["commit_to_served_s"][picked]]
            for stat, value in quantiles(values).items():
                out[f"{name}_commit_to_served_{stat}_s"] = value
    out["poll_brackets_swap"] = sum(b for r in rows for b in r["poll_brackets_swap"])
    out["poll_sightings"] = sum(len(r["poll_brackets_swap"]) for r in rows)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.core.settings import Settings
    from trainer.core.store import open_store

    sys.setswitchinterval(0.0005)  # this script's threads take the GIL soon after their socket answers
    swap_poll = args.swap_poll if args.swap_poll is not None else Settings.model_fields["swap_poll_seconds"].default
    total = args.periods * (2 if args.drop_notices else 1)
    traffic = period_events(total + 1, args.events, args.seed)
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    counts = Counts()
    scratch = Path(tempfile.mkdtemp(prefix="asmg-freshness-"))
    print(f"logs in {scratch}/logs (removed after a run that completes)", file=sys.stderr, flush=True)
    with processes(args, scratch) as p:
        started = time.monotonic()
        store = open_store(Settings(redis_url=f"redis://127.0.0.1:{p['redis_port']}/0", key_prefix=PREFIX))
        commits = Commits(p["redis_port"])
        commits.start()
        pollers = [Poller(url, args.poll_ms / 1000) for url, _ in p["replicas"]]
        threads = [threading.Thread(target=poller.run, daemon=True) for poller in pollers]
        for thread in threads:
            thread.start()
        metrics_clients = [httpx.Client(base_url=url, timeout=10) for url, _ in p["replicas"]]
        lb = httpx.Client(base_url=p["lb"], timeout=30)
        try:
            # one period trained before measuring: the trainer's first round builds its kernels and state
            one_period("warm-up", traffic[0], lb, counts, commits, pollers, metrics_clients, store)
            p["load"].start()
            time.sleep(2.0)
            for i in range(total):
                phase = "notices" if i < args.periods else "lost-notice"
                p["dropping"].value = int(phase == "lost-notice")
                time.sleep(rng.uniform(0, swap_poll if phase == "lost-notice" else args.max_gap))
                row = one_period(phase, traffic[i + 1], lb, counts, commits, pollers, metrics_clients, store)
                rows.append(row)
                worst = max(row["commit_to_served_s"])
                print(
                    f"{phase:<12} v{row['version']:<3} rollover→commit {row['rollover_to_commit_s'] * 1000:7.1f} ms  "
                    f"commit→served {' '.join(f'{t * 1000:7.1f}' for t in row['commit_to_served_s'])} ms  "
                    f"(all {worst * 1000:7.1f} ms)",
                    flush=True,
                )
                for _, proc in p["replicas"]:
                    proc.check()
                p["trainer"].check()
        finally:
            p["stop_load"].set()
            if p["load"].pid is not None:
                p["load"].join(60)
            for poller in pollers:
                poller.closing = True
            commits.stop.set()
            for client in [*metrics_clients, lb]:
                client.close()
            store.close()
        load = json.loads(p["load_out"].read_text()) if p["load_out"].exists() else {"requests": 0, "failed": 0}
        dropped = p["dropped"].value
        elapsed = time.monotonic() - started
    shutil.rmtree(scratch)  # kept, with every process's log, when the run fails
    poll_failures = sum(sum(poller.failures.values()) for poller in pollers)
    poll_requests = sum(poller.requests for poller in pollers)
    normal = [r for r in rows if r["phase"] == "notices"]
    lost_rows = [r for r in rows if r["phase"] == "lost-notice"]
    result: dict[str, Any] = {
        "replicas": args.replicas,
        **summarise(normal, 0),
        "failed_requests": load["failed"] + sum(counts.failures.values()) + poll_failures,
        "requests": {
            "load_through_nginx": load,
            "benchmark_through_nginx_and_metrics": {"requests": counts.requests, "failures": dict(counts.failures)},
            "direct_polls": {"requests": poll_requests, "failures": poll_failures},
        },
        "seconds": elapsed,
        "settings": {
            "replicas": args.replicas,
            "periods": args.periods,
            "events_per_period": args.events,
            "load_threads": args.load_threads,
            "load_rate": args.load_rate,
            "poll_ms": args.poll_ms,
            "max_gap_s": args.max_gap,
            "swap_poll_seconds": swap_poll,
            "drop_notices": args.drop_notices,
            "seed": args.seed,
            "model_env": MODEL_ENV,
            "cpus": os.cpu_count(),
        },
        "rows": rows,
    }
    if args.drop_notices:
        result["lost_notice"] = {
            "replicas_losing_notices": args.drop_notices,
            "notices_dropped": dropped,
            **summarise(lost_rows, args.drop_notices),
        }
    return result


def report(result: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    def line(name: str, d: dict[str, Any], key: str) -> str:
        p50, p99, top = (ms(d[f"{key}_{stat}_s"]) for stat in ("p50", "p99", "max"))
        return f"  {name:<30} p50 {p50:>9}  p99 {p99:>9}  max {top:>9}"

    poll, rate = result["settings"]["swap_poll_seconds"], result["requests"]["load_through_nginx"]["rate"]
    print(
        f"\n{result['replicas']} replicas behind nginx, {result['periods']} periods, ASMG_SWAP_POLL_SECONDS={poll:g}, "
        f"load {rate:.0f} req/s, failed requests {result['failed_requests']}"
    )
    for name, key in (
        ("commit → each replica serves", "commit_to_each_served"),
        ("commit → all replicas serve", "commit_to_all_served"),
        ("rollover → all replicas serve", "rollover_to_all_served"),
        ("commit → all (polled answers)", "commit_to_all_polled"),
        ("created → commit", "created_to_commit"),
    ):
        print(line(name, result, key))
    if "lost_notice" in result:
        lost = result["lost_notice"]
        print(f"  {lost['replicas_losing_notices']} replica(s) losing notices ({lost['notices_dropped']} dropped):")
        print(line("commit → served, notice lost", lost, "lost_notice_commit_to_served"))
        print(line("commit → served, others", lost, "with_notice_commit_to_served"))
        print(line("commit → all replicas serve", lost, "commit_to_all_served"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3, help="asmg serve processes behind nginx (≥ 1)")
    parser.add_argument("--periods", type=int, default=100, help="measured periods (per phase; ≥ 30)")
    parser.add_argument(
        "--drop-notices", type=int, default=1, help="replicas that lose every notice in a second phase (0: none)"
    )
    parser.add_argument("--swap-poll", type=float, help="the replicas' ASMG_SWAP_POLL_SECONDS (default: the service's)")
    parser.add_argument("--events", type=int, default=200, help="interactions posted per period")
    parser.add_argument("--load-threads", type=int, default=4, help="client threads of the predict load")
    parser.add_argument("--load-rate", type=float, default=200.0, help="predict requests a second through nginx")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="interval of the direct polls of each replica")
    parser.add_argument("--max-gap", type=float, default=0.25, help="most seconds of random pause between periods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "freshness.json")
    args = parser.parse_args()
    if args.replicas < 1 or not 0 <= args.drop_notices <= args.replicas or args.periods < 1:
        parser.error("need --replicas ≥ 1, --periods ≥ 1 and 0 ≤ --drop-notices ≤ --replicas")
    result = run(args)
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
