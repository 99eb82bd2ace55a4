"""The service trainer's cost per event, phase by phase, and the store's memory per event.

Starts its own redis-server, logs synthetic periods of ``--sizes`` events each
through ``RedisStore.append`` (batches of 100, the service's default model and
history length), and lets ``PeriodTrainer`` (the service's trainer, default
method ``asmg-gru-multi``) train them, one torch thread. For each period size
it prints the mean over the last ``--measure`` periods of every phase the
trainer reports (read, evaluate, gate, update, check, publish) in seconds and in
microseconds per event, and the Redis memory of one period's log (stream and
user set, ``MEMORY USAGE``) per event, the recent-click lists per user, and the
published model's size. The figures feed docs/scale.md.

    python benchmarks/trainer_phases.py --sizes 10000,40000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import redis
import torch
from harness import start_redis

from trainer.core.registry import ensure_initial_model
from trainer.core.settings import Settings
from trainer.core.store import Interaction, RedisStore
from trainer.loop.worker import PeriodTrainer
from trainer.research.synthetic import synthetic_events

BATCH = 100


def periods_of_events(size: int, periods: int, users: int, items: int) -> list[list[Interaction]]:
    table = synthetic_events(
        n_users=users, n_items=items, n_categories=20, n_periods=periods, events_per_period=size, seed=0
    )
    events = [
        Interaction(str(u), str(i), tuple(c), int(y), float(t))
        for u, i, c, y, t in zip(table.user, table.item, table.categories, table.label, table.timestamp, strict=True)
    ]
    return [events[p * size : (p + 1) * size] for p in range(periods)]


def memory(client: redis.Redis, pattern: str) -> int:
    return sum(int(client.memory_usage(key) or 0) for key in client.scan_iter(pattern, count=1000))


def run(redis_url: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url, key_prefix=f"phases{size}", method=args.method, trainer_nice=0)
    store = RedisStore(redis_url, settings.key_prefix, timeout=60.0)
    try:
        ensure_initial_model(store, settings)
        trainer = PeriodTrainer(store, settings)
        reports = []
        log_bytes = 0
        for number, events in enumerate(periods_of_events(size, args.periods, args.users, args.items), start=1):
            for start in range(0, len(events), BATCH):
                store.append(events[start : start + BATCH], settings.history_length)
            with redis.Redis.from_url(redis_url) as client:
                log_bytes = memory(client, f"{settings.key_prefix}:log:{number}*")
            store.rollover()
            reports += trainer.train_pending()
        measured = reports[-args.measure :]
        phases = {name: statistics.mean(r.seconds[name] for r in measured) for name in measured[0].seconds}
        with redis.Redis.from_url(redis_url) as client:
            click_bytes = memory(client, f"{settings.key_prefix}:clicks:*")
            users = sum(1 for _ in client.scan_iter(f"{settings.key_prefix}:clicks:*", count=1000))
        newest = store.versions()[-1]
        return {
            "events_per_period": size,
            "seconds": phases,
            "us_per_event": {name: 1e6 * s / size for name, s in phases.items()},
            "total_s": sum(phases.values()),
            "log_bytes_per_event": log_bytes / size,
            "click_list_bytes_per_user": click_bytes / max(users, 1),
            "model_bytes": newest.size,
            "trainer_state_bytes": trainer.state_bytes,
        }
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,40000", help="events per period, comma separated")
    parser.add_argument("--periods", type=int, default=6, help="periods trained per size")
    parser.add_argument("--measure", type=int, default=3, help="the last N periods are averaged")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--method", default="asmg-gru-multi")
    parser.add_argument("--out", type=Path, default=Path("results/trainer-phases.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        url, server = start_redis(Path(scratch), "no")
        try:
            for size in map(int, args.sizes.split(",")):
                rows.append(run(url, size, args))
        finally:
            server.terminate()
            server.wait()
    names = list(rows[0]["seconds"])
    print("events/period | " + " | ".join(f"{n} s (µs/event)" for n in names) + " | total s | log B/event")
    for row in rows:
        cells = [f"{row['seconds'][n]:.3f} ({row['us_per_event'][n]:.1f})" for n in names]
        print(
            f"{row['events_per_period']:,} | " + " | ".join(cells) + f" | {row['total_s']:.2f} | "
            f"{row['log_bytes_per_event']:.0f}"
        )
    for row in rows:
        print(
            f"{row['events_per_period']:,} events: click lists {row['click_list_bytes_per_user']:.0f} B/user, "
            f"model {row['model_bytes']:,} B, trainer state {row['trainer_state_bytes']:,} B"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
