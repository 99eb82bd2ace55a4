"""What logging each event with its user's history costs: store bytes and append time per event.

Appends a real log (MovieLens ``ml-latest-small`` by default, in time order, batches of 100,
a period every ``--period-events``) to a fresh Redis (its own redis-server) and a fresh
embedded SQLite store, once with the service's history length and once with none (the
baseline: no snapshot to take or keep), and prints, per store, bytes per logged event
(Redis: ``MEMORY USAGE`` of every period's stream and user set; SQLite: the database file)
and microseconds per appended event.

    python benchmarks/log_bytes.py --history 30 --period-events 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from harness import start_redis

from trainer.core.store import Interaction, LocalStore, RedisStore, Store
from trainer.research.datasets import load_dataset

BATCH = 100


def interactions(dataset: str, limit: int) -> list[Interaction]:
    table = load_dataset(dataset)
    n = min(limit, len(table))
    return [
        Interaction(str(u), str(i), tuple(map(str, c)), int(y), float(t))
        for u, i, c, y, t in zip(
            table.user[:n], table.item[:n], table.categories[:n], table.label[:n], table.timestamp[:n], strict=True
        )
    ]


def append_all(store: Store, events: list[Interaction], history: int, period_events: int) -> float:
    """Seconds to append ``events`` in batches (rollovers not counted)."""
    seconds = 0.0
    for start in range(0, len(events), BATCH):
        if start and start % period_events == 0:
            store.rollover()
        started = time.perf_counter()
        store.append(events[start : start + BATCH], history)
        seconds += time.perf_counter() - started
    return seconds


def measure(
    open_store: Callable[[str], Store],
    size: Callable[[Store], int],
    events: list[Interaction],
    history: int,
    period_events: int,
) -> tuple[float, float]:
    """Bytes and microseconds per logged event."""
    store = open_store(f"h{history}")
    try:
        seconds = append_all(store, events, history, period_events)
        return size(store) / len(events), seconds / len(events) * 1e6
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--history", type=int, default=30, help="history length (ASMG_HISTORY_LENGTH)")
    parser.add_argument("--period-events", type=int, default=5_000, help="events per period (a multiple of 100)")
    args = parser.parse_args()
    events = interactions(args.dataset, args.events)
    with tempfile.TemporaryDirectory() as scratch:
        url, server = start_redis(Path(scratch), "no")
        try:
            client = redis.Redis.from_url(url)

            def redis_bytes(store: Store) -> int:
                assert isinstance(store, RedisStore)
                keys = client.keys(f"{store.prefix}:log:*")
                return sum(int(client.memory_usage(key, samples=0) or 0) for key in keys)

            def sqlite_bytes(store: Store) -> int:
                assert isinstance(store, LocalStore)
                store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return store.path.stat().st_size

            print(f"{len(events)} events of {args.dataset}, batches of {BATCH}, {args.period_events} a period")
            print(f"{'store':8} {'history':>7} {'bytes/event':>12} {'µs/event':>9}")
            for name, opener, size in (
                ("redis", lambda prefix: RedisStore(url, prefix), redis_bytes),
                ("sqlite", lambda prefix: LocalStore(Path(scratch) / prefix), sqlite_bytes),
            ):
                rows = {h: measure(opener, size, events, h, args.period_events) for h in (0, args.history)}
                for h, (per_event, micros) in rows.items():
                    print(f"{name:8} {h:>7} {per_event:>12.0f} {micros:>9.1f}")
                (b0, t0), (b1, t1) = rows[0], rows[args.history]
                print(f"{name:8} ratio   {b1 / b0:>12.2f} {t1 / t0:>9.2f}")
        finally:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
