"""When ASMG pays: IU, ASMG-GRU multi and ASMG-Linear on streams of controlled drift.

Each point of the curve is the synthetic stream of trainer/research/drift.py
at one drift strength (degrees a taste or style vector turns per period) and
regularity (1: a steady turn, 0: a random walk), replayed under the paper's
protocol (31 periods, Θ_0 pre-trained on 1–10, test periods 25–31) with the
default meta configuration and base batches of 128. A seed draws both the
world and Θ_0, and one seed's world is the same at every strength and
regularity, so differences are paired across methods and across points.

Printed per point: each method's test AUC (mean ± std over seeds) and the
gain over IU, as the paired per-seed AUC difference (mean ± std) and relative
to IU's mean AUC. OUT gets drift.json (every point, with per-seed AUCs),
drift.png (the paired gain against strength) and each point's periods CSV;
the last line printed is the JSON's path.

    python benchmarks/drift.py --strengths 0,1,2,3,5 --regularity 1 --seeds 3 --out /tmp/drift-out
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.learning.updaters import meta_config
from trainer.research.cli import positive_int
from trainer.research.drift import check_regularity, check_strength, drift_events
from trainer.research.encoding import encode_log
from trainer.research.replay import MIN_ROWS_PER_PERIOD, PeriodResult, Protocol, Replay
from trainer.research.report import per_seed_means, summarise, write_periods_csv

METHODS = ("iu", "asmg-gru-multi", "asmg-linear")
LABELS = {"iu": "IU", "asmg-gru-multi": "GRU multi", "asmg-linear": "ASMG-Linear"}
MODEL = ModelConfig()
# small periods: the batch chosen for the small MovieLens sets, so that each period is more than a few steps
TRAIN = TrainConfig(batch_size=128)
PROTOCOL = Protocol()


def comma_floats(check: Callable[[float], None]) -> Callable[[str], list[float]]:
    """An argparse type: a comma list of floats, each passed through ``check``."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
            for value in values:
                check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not values:
            raise argparse.ArgumentTypeError("give at least one value")
        return list(dict.fromkeys(values))

    return parse


def events_per_period(text: str) -> int:
    n = positive_int(text)
    if n < MIN_ROWS_PER_PERIOD:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_ROWS_PER_PERIOD}, to score a period")
    return n


def blend(text: str) -> float:
    value = float(text)
    if not 0 < value <= 2:
        raise argparse.ArgumentTypeError("must be in (0, 2]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--strengths", type=comma_floats(check_strength), default=[0.0, 1.0, 2.0, 3.0, 5.0], help="degrees per period"
    )
    parser.add_argument(
        "--regularity", type=comma_floats(check_regularity), default=[1.0], help="1 = pure trend, 0 = random walk"
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="number of seeds (0..N-1)")
    parser.add_argument("--users", type=positive_int, default=300)
    parser.add_argument("--items", type=positive_int, default=400)
    parser.add_argument("--categories", type=positive_int, default=8)
    parser.add_argument("--dim", type=positive_int, default=4, help="taste and style dimensions")
    parser.add_argument("--events-per-period", type=events_per_period, default=5000)
    parser.add_argument(
        "--meta-blend",
        type=blend,
        help="GRU multi serves (1 - B)·IU + B·generated (default: its chosen blend; 1: the generated model whole)",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def stream_key(strength: float, regularity: float) -> tuple[float, float]:
    """Streams without drift are one stream whatever the regularity: replay it once."""
    return (strength, regularity) if strength > 0 else (0.0, 1.0)


def replay_point(args: argparse.Namespace, strength: float, regularity: float, seed: int) -> list[PeriodResult]:
    table = drift_events(
        n_users=args.users,
        n_items=args.items,
        n_categories=args.categories,
        dim=args.dim,
        n_periods=PROTOCOL.periods,
        events_per_period=args.events_per_period,
        strength=strength,
        regularity=regularity,
        seed=seed,
    )
    replay = Replay(encode_log(table, MODEL), MODEL, TRAIN, PROTOCOL)
    return [r for method in METHODS for r in replay.run(method, seed, meta_overrides(args, method))]


def meta_overrides(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """GRU multi's blend, where one is asked for: ASMG-Linear keeps its own."""
    return {"blend": args.meta_blend} if method == "asmg-gru-multi" and args.meta_blend is not None else {}


def point_summary(strength: float, regularity: float, results: Sequence[PeriodResult]) -> dict[str, Any]:
    per_seed = per_seed_means(results, "test")
    return {
        "strength": strength,
        "regularity": regularity,
        "methods": summarise(results, "test"),
        "per_seed_auc": {m: {str(s): v[0] for s, v in sorted(per_seed[m].items())} for m in METHODS},
    }


def format_points(points: Sequence[dict[str, Any]], seeds: int) -> str:
    header = f"{'reg':>4} {'strength':>8} " + " ".join(f"{LABELS[m] + ' AUC':>17}" for m in METHODS)
    header += "".join(f" {LABELS[m] + ' − IU':>19} {'rel%':>6}" for m in METHODS[1:])
    lines = [f"test AUC, mean ± std over {seeds} seed(s); gains paired per seed", header]
    for p in points:
        rows = p["methods"]
        line = f"{p['regularity']:>4g} {p['strength']:>8g} "
        line += " ".join(f"{rows[m]['auc_mean']:.4f} ± {rows[m]['auc_std']:.4f}" for m in METHODS)
        for m in METHODS[1:]:
            line += f" {rows[m]['paired_auc_diff_mean']:+.4f} ± {rows[m]['paired_auc_diff_std']:.4f}"
            line += f" {rows[m]['auc_imp_pct']:+6.2f}"
        lines.append(line)
    return "\n".join(lines)


def plot(points: Sequence[dict[str, Any]], path: Path, seeds: int, blend: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for regularity in dict.fromkeys(p["regularity"] for p in points):
        series = [p for p in points if p["regularity"] == regularity]
        for method, style in (("asmg-gru-multi", "-o"), ("asmg-linear", "--s")):
            axis.errorbar(
                [p["strength"] for p in series],
                [p["methods"][method]["paired_auc_diff_mean"] for p in series],
                yerr=[p["methods"][method]["paired_auc_diff_std"] for p in series],
                fmt=style,
                capsize=3,
                label=f"{LABELS[method]}{f' (blend {blend:g})' if method == 'asmg-gru-multi' else ''}, "
                f"regularity {regularity:g}",
            )
    axis.axhline(0.0, color="0.5", linewidth=0.8)
    axis.set_xlabel("drift strength (degrees per period)")
    axis.set_ylabel("test AUC − IU's, paired per seed")
    axis.set_title(f"When ASMG pays: gain over IU against drift ({seeds} seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "users": args.users,
        "items": args.items,
        "categories": args.categories,
        "dim": args.dim,
        "events_per_period": args.events_per_period,
        "seeds": args.seeds,
        "methods": list(METHODS),
        "model": asdict(MODEL),
        "train": asdict(TRAIN),
        "protocol": asdict(PROTOCOL),
        "meta": {m: asdict(meta_config(m, meta_overrides(args, m))) for m in METHODS if m.startswith("asmg")},
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    replayed: dict[tuple[float, float], list[PeriodResult]] = {}
    points = []
    for regularity in args.regularity:
        for strength in args.strengths:
            key = stream_key(strength, regularity)
            if key not in replayed:
                clock = time.perf_counter()
                replayed[key] = [r for s in range(args.seeds) for r in replay_point(args, *key, s)]
                write_periods_csv(replayed[key], args.out / f"periods-s{key[0]:g}-r{key[1]:g}.csv")
                print(
                    f"strength {strength:g}, regularity {regularity:g}: {time.perf_counter() - clock:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            points.append(point_summary(strength, regularity, replayed[key]))
    seconds = time.perf_counter() - started
    path = args.out / "drift.json"
    path.write_text(json.dumps({"settings": settings(args), "points": points, "seconds": seconds}, indent=2) + "\n")
    plot(
        points,
        args.out / "drift.png",
        args.seeds,
        meta_config("asmg-gru-multi", meta_overrides(args, "asmg-gru-multi")).blend,
    )
    print(format_points(points, args.seeds))
    print(f"{len(replayed)} stream(s) × {args.seeds} seed(s) × {len(METHODS)} methods in {seconds:.0f} s")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
