"""Model swaps under load: /v1/predict p99 and errors while a new version is
published every few seconds, against the same server's steady p99 in the same run.

Starts ``asmg serve`` (the peer benchmark's model sizes, trainer off) on a
Redis store and loads it with wrk (the shared harness's load.lua and bodies,
converted to our schema) at one concurrency, in ``--rounds`` pairs of
windows: ``--duration`` seconds steady, then as long while this script
publishes a new version (fresh weights, committed to the store exactly as
the trainer does) every ``--every`` seconds. The publisher makes its weights
before the windows and publishes at the trainer's CPU priority
(ASMG_TRAINER_NICE, as ``asmg trainer`` runs). Alternating windows keeps this
machine's drift out of the ratio. Prints every window, the mean p99 of each
kind, their ratio and how many versions were served.

    python benchmarks/swap_under_load.py --workers 2 --conc 32 --duration 10 --rounds 3 --every 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from harness import free_port, harness_bodies, start_server, wrk

MODEL = {
    "ASMG_EMBEDDING_DIM": "16",
    "ASMG_USER_BUCKETS": "50000",
    "ASMG_ITEM_BUCKETS": "50000",
    "ASMG_CATEGORY_BUCKETS": "1000",
    "ASMG_HISTORY_LENGTH": "30",
    "ASMG_HIDDEN": "200,80",
}


def summary(name: str, result: dict[str, object]) -> tuple[float, str]:
    latency: dict[str, dict[str, float]] = result["latency_us"]  # type: ignore[assignment]
    errors = sum(result["errors"].values())  # type: ignore[attr-defined]
    rate = int(result["requests"]) / (int(result["duration_us"]) / 1e6)  # type: ignore[call-overload]
    p50, p99 = latency["percentiles"]["50"] / 1000, latency["percentiles"]["99"] / 1000
    return p99, f"  {name:<22} {rate:8,.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms  errors {errors}"


def publisher(
    settings_env: dict[str, str], every: float, publishing: threading.Event, stop: threading.Event, published: list[int]
) -> None:
    import torch

    from trainer.core.model import EmbMLP
    from trainer.core.registry import new_version
    from trainer.core.settings import Settings
    from trainer.core.store import open_store
    from trainer.core.store.base import Interaction
    from trainer.loop.worker import lower_priority

    settings = Settings(**{k[5:].lower(): v for k, v in settings_env.items() if k.startswith("ASMG_")})
    store = open_store(settings)
    config = settings.model()
    # the trainer's work before a publish (training) is not what this measures: weights made up front
    torch.manual_seed(0)
    weights = [EmbMLP(config).params() for _ in range(2)]
    lower_priority(settings)
    try:
        while not stop.is_set():
            if not publishing.wait(0.1) or stop.wait(every) or not publishing.is_set():
                continue
            store.append([Interaction("u", "i", (), 1, time.time())], config.history_length)
            period = store.rollover()
            version = new_version(config, weights[period % 2], period, "iu")
            published.append(store.commit_period(version, b"", keep=10).version)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="p99 and errors of /v1/predict while versions are swapped in")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of steady and swapping windows")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between published versions")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        bodies = harness_bodies(scratch)
        port = free_port()
        prefix = f"swapbench{os.getpid()}"
        env = {
            **os.environ,
            **MODEL,
            "ASMG_REDIS_URL": args.redis_url,
            "ASMG_KEY_PREFIX": prefix,
            "ASMG_PORT": str(port),
            "ASMG_WORKERS": str(args.workers),
            "ASMG_TRAINER_IN_PROCESS": "false",
        }
        server, url = start_server(env)
        published: list[int] = []
        rows: list[str] = []
        p99s: dict[str, list[float]] = {"steady": [], "swaps": []}
        publishing, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=publisher, args=(env, args.every, publishing, stop, published))
        thread.start()
        try:
            wrk(f"{url}/v1/predict", args.conc, 5, bodies, scratch / "warm.json")
            for r in range(args.rounds):
                for kind in ("steady", "swaps"):
                    if kind == "swaps":
                        publishing.set()
                    name = f"round {r + 1} {'steady' if kind == 'steady' else f'new version every {args.every:g}s'}"
                    p99, row = summary(
                        name, wrk(f"{url}/v1/predict", args.conc, args.duration, bodies, scratch / "w.json")
                    )
                    publishing.clear()
                    p99s[kind].append(p99)
                    rows.append(row)
            stop.set()
            thread.join()
            serving = httpx.post(
                f"{url}/v1/predict",
                content=bodies.read_text().splitlines()[0],
                headers={"Content-Type": "application/json"},
            ).json()["model_version"]
        finally:
            stop.set()
            server.terminate()
            server.wait(30)
            import redis

            client = redis.Redis.from_url(args.redis_url)
            keys = list(client.scan_iter(f"{prefix}:*"))
            if keys:
                client.delete(*keys)
    steady_p99, swap_p99 = (sum(v) / len(v) for v in p99s.values())
    windows = f"{args.rounds} x ({args.duration}s steady, {args.duration}s swapping)"
    print(f"asmg serve, {args.workers} worker(s), c={args.conc}, {windows}")
    print("\n".join(rows))
    print(
        f"  mean p99: steady {steady_p99:.2f} ms, during swaps {swap_p99:.2f} ms: {swap_p99 / steady_p99:.2f}x "
        f"(target <= 1.5x); {len(published)} versions published, serving v{serving} at the end "
        f"(last published v{published[-1] if published else '-'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
