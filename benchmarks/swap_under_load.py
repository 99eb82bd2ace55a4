"""Model swaps under load: /v1/predict p99 and errors while a new version is
published every few seconds, against the same server's steady p99 in the same run.

Starts ``asmg serve`` (the peer benchmark's model sizes, trainer off) on a
Redis store, loads it with wrk (the shared harness's load.lua and bodies,
converted to our schema) at one concurrency for ``--duration`` seconds
steady, then again while this script publishes a new version (fresh
weights, committed to the store exactly as the trainer does) every
``--every`` seconds. Prints both rows, the p99 ratio and how many versions
were served.

    python benchmarks/swap_under_load.py --workers 2 --conc 32 --duration 20 --every 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from harness import BENCH, free_port, start_server, wrk

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


def publisher(settings_env: dict[str, str], every: float, stop: threading.Event, published: list[int]) -> None:
    import torch

    from trainer.model import EmbMLP
    from trainer.settings import Settings
    from trainer.store import open_store
    from trainer.store.base import Interaction
    from trainer.worker import new_version

    settings = Settings(**{k[5:].lower(): v for k, v in settings_env.items() if k.startswith("ASMG_")})
    store = open_store(settings)
    config = settings.model()
    try:
        while not stop.wait(every):
            store.append([Interaction("u", "i", (), 1, time.time())], config.history_length)
            period = store.rollover()
            torch.manual_seed(period)
            info = store.commit_period(new_version(config, EmbMLP(config).params(), period, "iu"), b"", keep=10)
            published.append(info.version)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="p99 and errors of /v1/predict while versions are swapped in")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between published versions")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        python = sys.executable
        subprocess.run([python, str(BENCH / "tools.py"), "gen", str(scratch / "data")], check=True, capture_output=True)
        bodies = scratch / "bodies.jsonl"
        convert = [python, str(BENCH / "tools.py"), "convert", str(scratch / "data" / "bodies.jsonl"), str(bodies)]
        subprocess.run(convert, check=True, capture_output=True)
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
        try:
            wrk(f"{url}/v1/predict", args.conc, 5, bodies, scratch / "warm.json")
            steady_p99, steady = summary(
                "steady", wrk(f"{url}/v1/predict", args.conc, args.duration, bodies, scratch / "steady.json")
            )
            stop = threading.Event()
            thread = threading.Thread(target=publisher, args=(env, args.every, stop, published))
            thread.start()
            swap_p99, swapping = summary(
                f"new version every {args.every:g}s",
                wrk(f"{url}/v1/predict", args.conc, args.duration, bodies, scratch / "swaps.json"),
            )
            stop.set()
            thread.join()
            serving = httpx.post(
                f"{url}/v1/predict",
                content=bodies.read_text().splitlines()[0],
                headers={"Content-Type": "application/json"},
            ).json()["model_version"]
        finally:
            server.terminate()
            server.wait(30)
            import redis

            client = redis.Redis.from_url(args.redis_url)
            keys = list(client.scan_iter(f"{prefix}:*"))
            if keys:
                client.delete(*keys)
    print(f"asmg serve, {args.workers} worker(s), c={args.conc}, {args.duration}s per row")
    print(steady)
    print(swapping)
    print(
        f"  p99 during swaps / steady p99: {swap_p99 / steady_p99:.2f}x (target <= 1.5x); "
        f"{len(published)} versions published, serving v{serving} at the end (last published v{published[-1]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
