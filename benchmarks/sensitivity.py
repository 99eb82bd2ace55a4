"""Figure 4: GRU multi's test AUC against the sequence length k and the hidden size d.

Each (k, d) setting is one resumable `asmg replay` table under OUT/k{k}-d{d}
with IU beside GRU multi. IU and Θ_0 do not depend on k or d: IU runs once
and its runs are copied into every other setting's table, and every table
shares one OUT/pretrained (each Θ_0 is trained once). The settings then run
``--jobs`` at a time, one process each. The plot and a table of the paired
ΔAUC against IU go to OUT; rerunning skips finished runs.

    python benchmarks/sensitivity.py --dataset ml-100k --seeds 5 --out results/sensitivity-ml-100k \
        -- --batch-size 128
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainer.research.report import read_periods_csv, summarise

WINDOWS = (1, 2, 3, 4, 5, 6)
HIDDEN = (4, 8, 12, 16)
DEFAULT_K, DEFAULT_D = 3, 4


def settings() -> list[tuple[int, int]]:
    """The k series at the default d, then the d series at the default k (their shared point once)."""
    points = [(k, DEFAULT_D) for k in WINDOWS] + [(DEFAULT_K, d) for d in HIDDEN]
    return list(dict.fromkeys(points))


def replay(dataset: str, methods: str, seeds: int, out: Path, k: int, d: int, extra: list[str], jobs: int) -> None:
    command = [sys.executable, "-m", "trainer.research.cli", "replay", "--dataset", dataset, "--methods", methods]
    command += ["--seeds", str(seeds), "--jobs", str(jobs), "--threads", "1", "--out", str(out)]
    command += ["--window", str(k), "--meta-hidden", str(d), *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description="sensitivity of GRU multi to k and d")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="settings run side by side")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="more asmg replay options, after --")
    args = parser.parse_args()
    points = settings()
    directory = {point: args.out / f"k{point[0]}-d{point[1]}" for point in points}
    shared = args.out / "pretrained"
    shared.mkdir(parents=True, exist_ok=True)
    for table in directory.values():
        table.mkdir(parents=True, exist_ok=True)
        if not (table / "pretrained").exists():
            (table / "pretrained").symlink_to(shared.resolve(), target_is_directory=True)
    first = directory[points[0]]
    replay(args.dataset, "iu", args.seeds, first, *points[0], args.extra, args.jobs)
    for point in points[1:]:
        (directory[point] / "runs").mkdir(exist_ok=True)
        for path in (first / "runs").glob("iu-seed*.csv"):
            if not (directory[point] / "runs" / path.name).exists():
                shutil.copyfile(path, directory[point] / "runs" / path.name)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(replay, args.dataset, "iu,asmg-gru-multi", args.seeds, directory[p], *p, args.extra, 1)
            for p in points
        ]
        for future in futures:
            future.result()

    rows: list[tuple[int, int, dict[str, Any]]] = []
    print("| k | d | GRU multi test AUC | paired ΔAUC vs IU |")
    print("| --- | --- | --- | --- |")
    for k, d in points:
        multi = summarise(read_periods_csv(directory[(k, d)] / "periods.csv"), "test")["asmg-gru-multi"]
        rows.append((k, d, multi))
        print(
            f"| {k} | {d} | {multi['auc_mean']:.4f} ± {multi['auc_std']:.4f} | "
            f"{multi['paired_auc_diff_mean']:+.4f} ± {multi['paired_auc_diff_std']:.4f} |"
        )
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for axis, series, label in (
        (axes[0], [(k, m) for k, d, m in rows if d == DEFAULT_D], f"sequence length k (d = {DEFAULT_D})"),
        (axes[1], [(d, m) for k, d, m in rows if k == DEFAULT_K], f"hidden size d (k = {DEFAULT_K})"),
    ):
        xs = [x for x, _ in series]
        axis.errorbar(
            xs,
            [m["paired_auc_diff_mean"] for _, m in series],
            yerr=[m["paired_auc_diff_std"] for _, m in series],
            marker="o",
            capsize=3,
        )
        axis.axhline(0.0, color="0.5", linewidth=0.8)
        axis.set_xticks(xs)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test AUC − IU's, paired per seed")
    figure.suptitle(f"{args.dataset}: sensitivity of ASMG-GRU multi ({args.seeds} seeds)")
    figure.tight_layout()
    figure.savefig(args.out / "sensitivity.png", dpi=120)
    print(f"wrote {args.out / 'sensitivity.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
