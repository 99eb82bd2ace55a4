"""Ingestion: events/s through POST /v1/interactions into Redis, against the store's own speed.

Starts its own redis-server (AOF on, ``--appendfsync`` as given: the
durability the figure holds for) and ``asmg serve`` on it, then loads
``/v1/interactions`` with wrk (the shared harness's load.lua) with batches
of 100 events at each concurrency. The baseline, measured in the same run on
the same Redis: one Python process appending the same batches straight
through ``RedisStore.append`` (no HTTP). Every accepted event is then counted
in the store: an accepted event that is not logged is a failure.

    python benchmarks/ingest.py --workers 2 --conc 8,32 --duration 10 --appendfsync everysec
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness import free_port, start_redis, start_server, wrk

BATCH = 100


def bodies(path: Path, count: int = 256) -> list[dict[str, object]]:
    rng = random.Random(7)
    batches = []
    with path.open("w") as f:
        for _ in range(count):
            events = [
                {
                    "user_id": rng.randrange(50_000),
                    "item_id": rng.randrange(1, 50_000),
                    "categories": [rng.randrange(1_000)],
                    "label": int(rng.random() < 0.2),
                }
                for _ in range(BATCH)
            ]
            batches.append({"events": events})
            f.write(json.dumps(batches[-1], separators=(",", ":")) + "\n")
    return batches


def direct_baseline(redis_url: str, batches: list[dict[str, object]], seconds: float) -> float:
    """Events/s of RedisStore.append alone, one process, the same batches."""
    from trainer.core.settings import Settings
    from trainer.core.store import open_store
    from trainer.core.store.base import Interaction

    settings = Settings(redis_url=redis_url, key_prefix="baseline")
    store = open_store(settings)
    encoded = [
        [
            Interaction(str(e["user_id"]), str(e["item_id"]), tuple(map(str, e["categories"])), e["label"], 1.0)
            for e in batch["events"]  # type: ignore[attr-defined]
        ]
        for batch in batches
    ]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        store.append(encoded[done % len(encoded)], settings.history_length)
        done += 1
    elapsed = time.perf_counter() - started
    store.close()
    return done * BATCH / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description="ingestion throughput of /v1/interactions into Redis")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--conc", default="8,32", help="wrk connections, comma list")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="everysec")
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        print("ingest: needs wrk and redis-server on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        redis_url, redis_process = start_redis(scratch, args.appendfsync)
        batches = bodies(scratch / "bodies.jsonl")
        port = free_port()
        env = {
            **os.environ,
            "ASMG_REDIS_URL": redis_url,
            "ASMG_PORT": str(port),
            "ASMG_WORKERS": str(args.workers),
            "ASMG_TRAINER_IN_PROCESS": "false",
            "ASMG_STATE_DIR": str(scratch / "state"),
        }
        try:
            server, base = start_server(env)
        except RuntimeError:
            redis_process.terminate()
            raise
        try:
            baseline = direct_baseline(redis_url, batches, args.duration)
            print(f"appendfsync {args.appendfsync}, batches of {BATCH} events, {args.workers} API process(es)")
            print(f"  baseline: RedisStore.append, one process, no HTTP   {baseline:10,.0f} events/s")
            accepted = 0
            for conc in [int(c) for c in args.conc.split(",")]:
                before = httpx.get(f"{base}/admin/status").json()["open_period_events"]
                result = wrk(
                    f"{base}/v1/interactions",
                    conc,
                    args.duration,
                    scratch / "bodies.jsonl",
                    scratch / f"wrk-{conc}.json",
                )
                errors = result["errors"]
                failed = sum(errors.values())  # type: ignore[attr-defined]
                ok = int(result["requests"]) - failed  # type: ignore[call-overload]
                rate = ok * BATCH / (int(result["duration_us"]) / 1e6)  # type: ignore[call-overload]
                logged = httpx.get(f"{base}/admin/status").json()["open_period_events"] - before
                accepted += ok * BATCH
                p99 = result["latency_us"]["percentiles"]["99"] / 1000  # type: ignore[index]
                print(
                    f"  c={conc:<3} /v1/interactions {rate:10,.0f} events/s  ({rate / baseline:.2f}x baseline)  "
                    f"p99 {p99:.1f} ms  errors {failed}  accepted {ok * BATCH:,} logged {logged:,}"
                )
                if logged < ok * BATCH:
                    print("  LOST EVENTS: fewer logged than accepted", file=sys.stderr)
                    return 1
        finally:
            server.terminate()
            server.wait(30)
            redis_process.terminate()
            redis_process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
