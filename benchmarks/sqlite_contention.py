"""How long ingestion on the embedded store waits behind the trainer's commit.

The API appends through its own LocalStore (one writer thread, lock wait bounded
by ASMG_STORE_TIMEOUT_SECONDS) while a trainer works through another. Every
append's latency is recorded, first with no trainer (the baseline, same run),
then while the trainer commits periods back to back (a model blob and a trainer
state of the given sizes, one transaction each: the commits' own times are the
longest it holds SQLite's write lock), then while it deletes the logs of old
periods (ASMG_KEEP_LOG_PERIODS) from a log of ``--log-events`` events. An append
that would have waited longer than the timeout fails (a 503 at the API) and is
counted.

    python benchmarks/sqlite_contention.py --state-mb 64 --model-mb 4 --seconds 10 --log-events 600000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from trainer.core.store import LocalStore, local_store
from trainer.core.store.base import Interaction, NewVersion

BATCH = 100


def append_latencies(store: LocalStore, seconds: float, stop: threading.Event) -> tuple[list[float], int]:
    """Appends of BATCH events, back to back with a short pause, for ``seconds``: latencies and failures."""
    latencies, failures, n = [], 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        events = [Interaction(f"u{i % 997}", f"i{i}", ("c",), int(i % 3 == 0), 1.7e9) for i in range(n, n + BATCH)]
        n += BATCH
        started = time.perf_counter()
        try:
            store.append(events, 30)
            latencies.append(time.perf_counter() - started)
        except sqlite3.OperationalError:
            failures += 1
        time.sleep(0.002)
    return latencies, failures


def summary(name: str, latencies: list[float], failures: int) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"{name:<34} appends {len(latencies):6d}  p50 {statistics.median(ordered) * 1e3:7.2f} ms  "
        f"p99 {p99 * 1e3:7.2f} ms  max {ordered[-1] * 1e3:7.2f} ms  failed {failures}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="ingestion latency on SQLite behind trainer commits")
    parser.add_argument("--state-mb", type=float, default=64, help="trainer state committed each period")
    parser.add_argument("--model-mb", type=float, default=4, help="model version committed each period")
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase")
    parser.add_argument("--timeout", type=float, default=2.0, help="the API's lock wait (ASMG_STORE_TIMEOUT_SECONDS)")
    parser.add_argument("--log-events", type=int, default=600_000, help="log the deletion phase starts from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asmg-sqlite-") as scratch:
        api = LocalStore(Path(scratch), busy_seconds=args.timeout)
        trainer = LocalStore(Path(scratch), busy_seconds=60.0)
        weights = os.urandom(int(args.model_mb * 2**20))
        state = os.urandom(int(args.state_mb * 2**20))
        stop = threading.Event()
        print(f"state {args.state_mb:g} MB, model {args.model_mb:g} MB, lock wait {args.timeout:g} s, {BATCH} events")
        print(summary("baseline (no trainer)", *append_latencies(api, args.seconds, stop)))

        commits: list[float] = []

        def commit_forever() -> None:
            period = trainer.trained_through()
            while not stop.is_set():
                period += 1
                version = NewVersion(weights, hashlib.sha256(weights).hexdigest(), period, "iu")
                started = time.perf_counter()
                trainer.commit_period(version, state, keep=3)
                commits.append(time.perf_counter() - started)

        committer = threading.Thread(target=commit_forever)
        committer.start()
        try:
            result = append_latencies(api, args.seconds, stop)
        finally:
            stop.set()
            committer.join()
        print(summary("with commits back to back", *result))
        print(
            f"{'trainer commits':<34} count   {len(commits):6d}  p50 {statistics.median(commits) * 1e3:7.2f} ms  "
            f"max {max(commits) * 1e3:7.2f} ms"
        )

        # six periods of log, all trained; the oldest half is deleted while the API appends
        per_period = args.log_events // 6
        for period in range(6):
            for start in range(period * per_period, (period + 1) * per_period, 1000):
                batch = [
                    Interaction(f"u{i % 50_000}", f"i{i}", ("c",), int(i % 3 == 0), 1.7e9)
                    for i in range(start, start + 1000)
                ]
                trainer.append(batch, 30)
            trainer.rollover()
            through = trainer.trained_through() + 1
            trainer.commit_period(NewVersion(b"w", hashlib.sha256(b"w").hexdigest(), through, "iu"), b"", keep=3)
        stop.clear()
        seconds: list[float] = []

        def drop() -> None:
            started = time.perf_counter()
            trainer.drop_logs(trainer.trained_through() - 3, 30)
            seconds.append(time.perf_counter() - started)
            stop.set()

        dropper = threading.Timer(0.5, drop)
        dropper.start()
        result = append_latencies(api, 600, stop)
        dropper.join()
        print(summary(f"deleting {3 * per_period} logged events", *result))
        print(f"{'the deletion':<34} took {seconds[0]:.2f} s, in transactions of {local_store.DROP_SLICE} log rows")
        api.close()
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
