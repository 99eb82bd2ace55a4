"""Trainer cost per period: IU against ASMG-GRU multi (k = 3), on ml-100k-sized
periods (~3.2k rows) and on ml-1m periods (~32k rows, 10× larger).

Each (data set, method) runs in its own process (one torch thread, seed 0,
the service's base settings: batch 256, lr 1e-3) so its peak memory is its
own. Reported per period, mean over the last 10 updates: the whole update,
the meta part (everything ASMG adds to IU's step: the period's category
weights, the generator's training, the hidden-state carry, tracking live
rows and generating the serving model), and the rest (the base model's
training and the copy of it that is kept, which is exactly IU's step:
ASMG's base model is trained by IU). The target is a meta step no dearer
than the IU step. Two baselines: IU run alone in the same run, and the IU
step inside the same ASMG updates ("rest"), which is interleaved with the
meta step period by period and so drifts with it when the machine's speed
does.

    python benchmarks/trainer_period.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(dataset: str, method: str, batch_size: int) -> dict[str, float]:
    import torch

    from trainer.core.config import ModelConfig, TrainConfig
    from trainer.research.datasets import load_dataset
    from trainer.research.encoding import encode_log
    from trainer.research.replay import Replay

    torch.set_num_threads(1)
    config = ModelConfig()
    replay = Replay(encode_log(load_dataset(dataset), config), config, TrainConfig(batch_size=batch_size))
    started = time.perf_counter()
    results = replay.run(method, 0)
    last = results[-10:]
    update = sum(r.update_seconds for r in last) / len(last)
    meta = sum(r.meta_seconds for r in last) / len(last)
    return {
        "rows_per_period": sum(r.rows for r in last) / len(last),
        "update_s": update,
        "meta_s": meta,
        "rest_s": update - meta,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "replay_s": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="trainer time and memory per period")
    parser.add_argument("--datasets", default="ml-100k,ml-1m")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.batch_size)))
        return 0
    print(
        "| data set | rows/period | method | update s | meta s | rest s | meta / IU update "
        "| meta / rest (same updates) | peak RSS MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dataset in args.datasets.split(","):
        figures = {}
        for method in ("iu", "asmg-gru-multi"):
            command = [sys.executable, __file__, "--one", dataset, method, "--batch-size", str(args.batch_size)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures[method] = json.loads(out.strip().splitlines()[-1])
        iu = figures["iu"]["update_s"]
        for method, f in figures.items():
            ratio = f"{f['meta_s'] / iu:.2f}x" if f["meta_s"] else "—"
            interleaved = f"{f['meta_s'] / f['rest_s']:.2f}x" if f["meta_s"] else "—"
            print(
                f"| {dataset} | {f['rows_per_period']:,.0f} | {method} | {f['update_s']:.3f} | {f['meta_s']:.3f} | "
                f"{f['rest_s']:.3f} | {ratio} | {interleaved} | {f['peak_rss_mb']:,.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
