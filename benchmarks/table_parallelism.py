"""Which uses two cores better for a replay table: processes or torch threads?

Runs the same small table three ways in fresh directories, one after the
other, and prints each wall time and its ratio to the single-thread run:
one process with 1 torch thread, one process with ``--threads N``, and
``--jobs N`` processes of 1 thread each. `asmg replay`'s default follows
the answer.

    python benchmarks/table_parallelism.py --dataset ml-100k --methods iu,asmg-gru-multi --seeds 2 \
        -- --batch-size 128
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_table(dataset: str, methods: str, seeds: int, out: Path, options: list[str]) -> float:
    command = [sys.executable, "-m", "trainer.research.cli", "replay", "--dataset", dataset, "--methods", methods]
    started = time.perf_counter()
    subprocess.run([*command, "--seeds", str(seeds), "--out", str(out), *options], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description="processes or torch threads for a replay table")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--methods", default="iu,asmg-gru-multi")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="more asmg replay options, after --")
    args = parser.parse_args()
    ways = {
        "1 process, 1 thread": ["--threads", "1"],
        f"1 process, {args.cores} threads": ["--threads", str(args.cores)],
        f"{args.cores} processes, 1 thread each": ["--jobs", str(args.cores)],
    }
    with tempfile.TemporaryDirectory() as scratch:
        seconds = {
            name: timed_table(args.dataset, args.methods, args.seeds, Path(scratch) / str(i), [*opts, *args.extra])
            for i, (name, opts) in enumerate(ways.items())
        }
    base = seconds["1 process, 1 thread"]
    print(f"{args.dataset}, {args.methods}, {args.seeds} seeds:")
    for name, value in seconds.items():
        print(f"  {name:<28} {value:7.1f} s   speed-up {base / value:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
