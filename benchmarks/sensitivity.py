"""Figure 4: GRU multi's test AUC against the sequence length k and the hidden size d.

Each setting is one resumable `asmg replay` table (IU beside it), under
OUT/k{k} and OUT/d{d}; the plot and a table of the paired ΔAUC against IU go
to OUT. Rerunning skips finished runs.

    python benchmarks/sensitivity.py --dataset ml-100k --seeds 5 --out results/sensitivity-ml-100k \
        -- --batch-size 128
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainer.report import read_periods_csv, summarise

WINDOWS = (1, 2, 3, 4, 5, 6)
HIDDEN = (4, 8, 12, 16)


def table(dataset: str, seeds: int, jobs: int, out: Path, extra: list[str]) -> dict[str, dict[str, Any]]:
    command = [sys.executable, "-m", "trainer.cli", "replay", "--dataset", dataset, "--methods", "iu,asmg-gru-multi"]
    subprocess.run([*command, "--seeds", str(seeds), "--jobs", str(jobs), "--out", str(out), *extra], check=True)
    return summarise(read_periods_csv(out / "periods.csv"), "test")


def main() -> int:
    parser = argparse.ArgumentParser(description="sensitivity of GRU multi to k and d")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="more asmg replay options, after --")
    args = parser.parse_args()
    rows = []
    for name, values, option in (("k", WINDOWS, "--window"), ("d", HIDDEN, "--meta-hidden")):
        for value in values:
            summary = table(
                args.dataset, args.seeds, args.jobs, args.out / f"{name}{value}", [option, str(value), *args.extra]
            )
            multi = summary["asmg-gru-multi"]
            rows.append(
                (
                    name,
                    value,
                    multi["auc_mean"],
                    multi["auc_std"],
                    multi["paired_auc_diff_mean"],
                    multi["paired_auc_diff_std"],
                )
            )
            print(
                f"{name}={value:<3} AUC {multi['auc_mean']:.4f} ± {multi['auc_std']:.4f}  "
                f"paired ΔAUC vs IU {multi['paired_auc_diff_mean']:+.4f} ± {multi['paired_auc_diff_std']:.4f}",
                flush=True,
            )
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for axis, name, label in ((axes[0], "k", "sequence length k"), (axes[1], "d", "hidden size d")):
        points = [r for r in rows if r[0] == name]
        axis.errorbar(
            [r[1] for r in points], [r[2] for r in points], yerr=[r[3] for r in points], marker="o", capsize=3
        )
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test AUC, GRU multi")
    figure.suptitle(f"{args.dataset}: sensitivity of ASMG-GRU multi")
    figure.tight_layout()
    figure.savefig(args.out / "sensitivity.png", dpi=120)
    print(f"wrote {args.out / 'sensitivity.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
