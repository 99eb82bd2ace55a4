"""Wall time of one `asmg replay` (one method, one seed) end to end.

Targets (2-core machine): under 30 s on ml-100k and under 2 minutes on ml-1m.
IU is timed in the same run as the baseline.

    python benchmarks/replay_speed.py --datasets ml-100k,ml-1m
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def time_replay(dataset: str, method: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        command = [sys.executable, "-m", "trainer.research.cli", "replay", "--dataset", dataset, "--methods", method]
        subprocess.run(
            [*command, "--seeds", "1", "--out", out, *extra],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description="time one replay per method")
    parser.add_argument("--datasets", default="ml-100k,ml-1m")
    parser.add_argument("--methods", default="iu,asmg-gru-multi")
    parser.add_argument("extra", nargs="*", help="more asmg replay options, after --")
    args = parser.parse_args()
    for dataset in args.datasets.split(","):
        for method in args.methods.split(","):
            seconds = time_replay(dataset, method, args.extra)
            print(f"{dataset:<16} {method:<16} {seconds:6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
