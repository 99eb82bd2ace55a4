"""Meta-generator time (training, state carry, generation) of GRU full vs GRU
multi at the last period.

The paper (Table 3) reports full as 6.5–7× slower than multi at period 30.
Both run in this process on the same data, seed and pre-trained model; IU's
update time at the same period is printed as the baseline.

    python benchmarks/meta_time.py --dataset ml-1m
"""

from __future__ import annotations

import argparse
import sys

import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.research.datasets import load_dataset
from trainer.research.encoding import encode_log
from trainer.research.replay import Replay


def main() -> int:
    parser = argparse.ArgumentParser(description="GRU full vs multi meta-training time")
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024, help="base-model batch (the tables: 256 on ml-1m)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig()
    train = TrainConfig(batch_size=args.batch_size)
    replay = Replay(encode_log(load_dataset(args.dataset), config), config, train)
    last = {}
    for method in ("iu", "asmg-gru-multi", "asmg-gru-full"):
        last[method] = replay.run(method, args.seed)[-1]
    multi, full = last["asmg-gru-multi"], last["asmg-gru-full"]
    print(
        f"{args.dataset}, update at period {multi.period - 1} "
        f"(seed {args.seed}, batch {args.batch_size}, {args.threads} thread(s)):"
    )
    print(f"  IU update (baseline)       {last['iu'].update_seconds:7.2f} s")
    print(f"  GRU multi meta generator   {multi.meta_seconds:7.2f} s  (whole update {multi.update_seconds:.2f} s)")
    print(f"  GRU full meta generator    {full.meta_seconds:7.2f} s  (whole update {full.update_seconds:.2f} s)")
    print(f"  full / multi               {full.meta_seconds / multi.meta_seconds:7.2f}x  (paper: 6.5-7x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
