"""Turn per-period replay results into the paper's Table 1 and Figure 3."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from trainer.core.methods import REPLAY_METHODS
from trainer.research.replay import PeriodResult, Split

# The paper's Table 1 and 2 on MovieLens-25M (docs/method.md §8): mean AUC and
# LogLoss over its 7 test periods. A different, 25× larger data set, printed
# beside ours for the shape of the comparison, not the level.
PAPER_MOVIELENS: dict[str, tuple[float, float]] = {
    "iu": (0.7494, 0.5871),
    "bu-3": (0.7379, 0.5949),
    "bu-5": (0.7280, 0.6056),
    "bu-7": (0.7212, 0.6105),
    "spmf": (0.7511, 0.5857),
    "incctr": (0.7502, 0.5865),
    "sml": (0.7522, 0.5843),
    "sml-mf": (0.7242, 0.6106),
    "asmg-linear": (0.7524, 0.5840),
    "asmg-gru-single": (0.7539, 0.5828),
    "asmg-gru-multi": (0.7564, 0.5806),
    "asmg-gru-full": (0.7565, 0.5811),
    "asmg-gru-zero": (0.7550, 0.5818),
    "asmg-gru-unif": (0.7563, 0.5811),
}


def in_table_order(methods: Iterable[str]) -> list[str]:
    """The paper's row order; names it does not know go last, alphabetically."""
    rank = {m: i for i, m in enumerate(REPLAY_METHODS)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def per_seed_means(results: Iterable[PeriodResult], split: Split) -> dict[str, dict[int, tuple[float, float]]]:
    """method → seed → (mean AUC, mean LogLoss) over the split's periods."""
    grouped: dict[tuple[str, int], list[PeriodResult]] = defaultdict(list)
    for r in results:
        if r.split == split:
            grouped[(r.method, r.seed)].append(r)
    out: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for (method, seed), rows in grouped.items():
        out[method][seed] = (float(np.mean([r.auc for r in rows])), float(np.mean([r.logloss for r in rows])))
    return dict(out)


def summarise(
    results: Sequence[PeriodResult], split: Split = "test", baseline: str = "iu"
) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds of each method's mean over the split's periods,
    with the relative gain over ``baseline`` and the paired per-seed AUC
    difference (mean, std, and how many standard deviations it clears)."""
    table = per_seed_means(results, split)
    base = table.get(baseline)
    summary: dict[str, dict[str, Any]] = {}
    for method in in_table_order(table):
        by_seed = table[method]
        aucs = np.array([v[0] for v in by_seed.values()])
        losses = np.array([v[1] for v in by_seed.values()])
        row: dict[str, Any] = {
            "auc_mean": float(aucs.mean()),
            "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
            "logloss_mean": float(losses.mean()),
            "logloss_std": float(losses.std(ddof=1)) if len(losses) > 1 else 0.0,
            "seeds": len(aucs),
        }
        if base is not None:
            seeds = sorted(set(by_seed) & set(base))
            diff = np.array([by_seed[s][0] - base[s][0] for s in seeds])
            base_auc = float(np.mean([base[s][0] for s in seeds]))
            base_loss = float(np.mean([base[s][1] for s in seeds]))
            row["auc_imp_pct"] = 100.0 * (row["auc_mean"] - base_auc) / base_auc
            row["logloss_imp_pct"] = 100.0 * (base_loss - row["logloss_mean"]) / base_loss
            row["paired_auc_diff_mean"] = float(diff.mean())
            row["paired_auc_diff_std"] = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        summary[method] = row
    return summary


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    width = max([len("method"), *map(len, summary)])
    lines = [f"{'method':<{width}} {'AUC':>17} {'LogLoss':>17} {'imp% AUC':>9} {'paired ΔAUC':>18}"]
    for method, row in summary.items():
        paired = ""
        if "paired_auc_diff_mean" in row:
            paired = f"{row['paired_auc_diff_mean']:+.4f} ± {row['paired_auc_diff_std']:.4f}"
        imp = f"{row['auc_imp_pct']:+.2f}" if "auc_imp_pct" in row else ""
        lines.append(
            f"{method:<{width}} {row['auc_mean']:.4f} ± {row['auc_std']:.4f} "
            f"{row['logloss_mean']:.4f} ± {row['logloss_std']:.4f} {imp:>9} {paired:>18}"
        )
    return "\n".join(lines)


def format_markdown(summary: dict[str, dict[str, Any]], paper: bool = False) -> str:
    """Table 1 as markdown; the best AUC, LogLoss and paired difference per
    column in bold. ``paper`` adds the paper's MovieLens-25M numbers."""
    best_auc = max(row["auc_mean"] for row in summary.values())
    best_loss = min(row["logloss_mean"] for row in summary.values())
    paired_means = [row["paired_auc_diff_mean"] for row in summary.values() if "paired_auc_diff_mean" in row]
    best_paired = max(paired_means, default=None)
    best_paper = max((PAPER_MOVIELENS[m][0] for m in summary if m in PAPER_MOVIELENS), default=None)
    header = "| method | AUC | LogLoss | imp% AUC | paired ΔAUC vs IU (mean ± std) |"
    rule = "| --- | --- | --- | --- | --- |"
    if paper:
        header += " paper ML-25M AUC / LogLoss |"
        rule += " --- |"
    lines = [header, rule]
    for method, row in summary.items():
        auc_text = f"{row['auc_mean']:.4f} ± {row['auc_std']:.4f}"
        loss_text = f"{row['logloss_mean']:.4f} ± {row['logloss_std']:.4f}"
        if row["auc_mean"] == best_auc:
            auc_text = f"**{auc_text}**"
        if row["logloss_mean"] == best_loss:
            loss_text = f"**{loss_text}**"
        imp = f"{row['auc_imp_pct']:+.2f}" if "auc_imp_pct" in row else ""
        paired = ""
        if "paired_auc_diff_mean" in row and method != "iu":
            paired = f"{row['paired_auc_diff_mean']:+.4f} ± {row['paired_auc_diff_std']:.4f}"
            if row["paired_auc_diff_mean"] == best_paired:
                paired = f"**{paired}**"
        line = f"| {method} | {auc_text} | {loss_text} | {imp} | {paired} |"
        if paper:
            reported = PAPER_MOVIELENS.get(method)
            text = f"{reported[0]:.4f} / {reported[1]:.4f}" if reported else "—"
            line += f" **{text}** |" if reported and reported[0] == best_paper else f" {text} |"
        lines.append(line)
    return "\n".join(lines)


def meta_seconds_at_last_period(results: Iterable[PeriodResult]) -> dict[str, float]:
    """method → mean over seeds of the meta generator's seconds (training, state
    carry and generation) at the last period it trained on (the paper's
    Table 3); methods without a meta generator are left out."""
    last: dict[tuple[str, int], PeriodResult] = {}
    for r in results:
        key = (r.method, r.seed)
        if r.meta_seconds > 0 and (key not in last or r.period > last[key].period):
            last[key] = r
    by_method: dict[str, list[float]] = defaultdict(list)
    for (method, _), r in last.items():
        by_method[method].append(r.meta_seconds)
    return {m: float(np.mean(by_method[m])) for m in in_table_order(by_method)}


def write_periods_csv(results: Sequence[PeriodResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(PeriodResult)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)


def read_periods_csv(path: Path) -> list[PeriodResult]:
    with path.open(newline="") as f:
        return [
            PeriodResult(
                method=row["method"],
                seed=int(row["seed"]),
                period=int(row["period"]),
                split=row["split"],  # type: ignore[arg-type]
                auc=float(row["auc"]),
                logloss=float(row["logloss"]),
                rows=int(row["rows"]),
                update_seconds=float(row["update_seconds"]),
                meta_seconds=float(row["meta_seconds"]),
            )
            for row in csv.DictReader(f)
        ]


def write_summary(summary: dict[str, dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def plot_auc(results: Sequence[PeriodResult], path: Path, title: str) -> None:
    """Per-period AUC of each method, mean over seeds (the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    test_periods = sorted({r.period for r in results if r.split == "test"})
    for r in results:
        by_method[r.method][r.period].append(r.auc)
    fig, ax = plt.subplots(figsize=(9, 5))
    palette = plt.get_cmap("tab20")
    for i, method in enumerate(in_table_order(by_method)):
        periods = by_method[method]
        xs = sorted(periods)
        # ASMG's lines solid, the baselines' dashed, so 14 lines stay apart.
        style = "-" if method.startswith("asmg") else "--"
        ax.plot(
            xs,
            [np.mean(periods[p]) for p in xs],
            style,
            color=palette(i % 20),
            marker="o",
            markersize=3,
            linewidth=1.2,
            label=method,
        )
    if test_periods:
        ax.axvspan(test_periods[0] - 0.5, test_periods[-1] + 0.5, color="0.92", zorder=0, label="test periods")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("period scored")
    ax.set_ylabel("AUC (mean over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
