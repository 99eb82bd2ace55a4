"""Choose settings on the validation periods (scored periods 22–24) only.

Runs each configuration of a grid on the same pre-trained Θ_0 per seed and
prints its mean validation AUC and the paired per-seed difference against the
grid's first entry. Test periods are neither printed nor stored.

    python benchmarks/tune.py --dataset ml-1m --seeds 3 --grid base
    python benchmarks/tune.py --dataset ml-100k --seeds 3 --grid baselines --base '{"batch_size": 128}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.core.config import BaselineConfig, ModelConfig, SmlConfig, TrainConfig
from trainer.research.cli import json_object, positive_int
from trainer.research.datasets import load_dataset
from trainer.research.encoding import encode_log
from trainer.research.replay import Replay, theta0_dir

# each entry: (label, method, base-model settings, meta settings)
Grid = list[tuple[str, str, dict[str, Any], dict[str, Any]]]


def served_whole(grid: Grid) -> Grid:
    """The grid with every ASMG-GRU setting serving the generated model whole (blend 1),
    as these settings were chosen before the blend was."""
    return [
        (label, method, base, {"blend": 1.0, **meta} if method.startswith("asmg-gru") else meta)
        for label, method, base, meta in grid
    ]


def grids(base: dict[str, Any]) -> dict[str, Grid]:
    chosen = _grids(base)
    return {name: served_whole(grid) if name in ("meta", "replay") else grid for name, grid in chosen.items()}


def _grids(base: dict[str, Any]) -> dict[str, Grid]:
    return {
        "base": [
            ("iu lr1e-3 b1024", "iu", {}, {}),
            ("iu lr1e-3 b256", "iu", {"batch_size": 256}, {}),
            ("iu lr1e-3 b128", "iu", {"batch_size": 128}, {}),
            ("iu lr1e-2 b1024", "iu", {"lr": 1e-2}, {}),
            ("iu lr1e-3 b1024 e5", "iu", {"epochs": 5}, {}),
            ("iu lr1e-4 b1024", "iu", {"lr": 1e-4}, {}),
        ],
        "meta": [
            ("iu", "iu", base, {}),
            ("multi paper (plain 1e-2)", "asmg-gru-multi", base, {"readout": "plain", "lr": 1e-2}),
            ("multi residual 1e-2", "asmg-gru-multi", base, {"lr": 1e-2}),
            ("multi residual 1e-3", "asmg-gru-multi", base, {"lr": 1e-3}),
            ("multi residual 1e-4", "asmg-gru-multi", base, {"lr": 1e-4}),
            ("multi residual 1e-3 b256", "asmg-gru-multi", base, {"lr": 1e-3, "batch_size": 256}),
            ("multi residual 1e-3 scaled", "asmg-gru-multi", base, {"lr": 1e-3, "input_scale": True}),
            ("multi residual 1e-2 scaled", "asmg-gru-multi", base, {"lr": 1e-2, "input_scale": True}),
            ("multi residual 1e-3 k5", "asmg-gru-multi", base, {"lr": 1e-3, "window": 5}),
            ("multi residual 1e-3 d8", "asmg-gru-multi", base, {"lr": 1e-3, "hidden": 8}),
            ("multi residual 1e-3 gate-bias", "asmg-gru-multi", base, {"lr": 1e-3, "gate_bias": True}),
            ("linear 1e-3", "asmg-linear", base, {"lr": 1e-3}),
            ("multi residual 3e-3", "asmg-gru-multi", base, {"lr": 3e-3}),
            ("multi residual 1e-3 e2", "asmg-gru-multi", base, {"lr": 1e-3, "epochs": 2}),
            ("multi residual 1e-3 b512", "asmg-gru-multi", base, {"lr": 1e-3, "batch_size": 512}),
        ],
        # more meta signal per period: earlier windows and their targets (meta-replay), against more epochs
        "replay": [
            ("iu", "iu", base, {}),
            ("multi", "asmg-gru-multi", base, {}),
            ("multi+gate", "asmg-gru-multi+gate", base, {}),
            ("multi e2", "asmg-gru-multi", base, {"epochs": 2}),
            ("multi+ens", "asmg-gru-multi+ens", base, {}),
            ("multi lr 5e-4", "asmg-gru-multi", base, {"lr": 5e-4}),
            (
                "multi replay 4 share 0.5 lr 3e-4",
                "asmg-gru-multi",
                base,
                {"replay": 4, "replay_share": 0.5, "lr": 3e-4},
            ),
            ("multi replay 2 share 0.25", "asmg-gru-multi", base, {"replay": 2, "replay_share": 0.25}),
            *[
                (f"multi replay {j} share {share}", "asmg-gru-multi", base, {"replay": j, "replay_share": share})
                for j, share in ((1, 1.0), (2, 1.0), (4, 1.0), (2, 0.5), (4, 0.5), (8, 0.5))
            ],
            # the stopping rule: up to E epochs, each kept only while a held-back tenth of D_t improves
            *[(f"multi holdout 0.1 e{e}", "asmg-gru-multi", base, {"holdout": 0.1, "epochs": e}) for e in (1, 3, 5)],
        ],
        # the served model between IU's (0) and the generated one (1): how far to take the generator's step
        "blend": [
            ("iu", "iu", base, {}),
            *[(f"multi blend {b}", "asmg-gru-multi", base, {"blend": b}) for b in (1.0, 0.25, 0.5, 0.75, 1.5)],
            ("multi+ens blend 1.0", "asmg-gru-multi+ens", base, {"blend": 1.0}),
        ],
        # the baselines' own settings ride in the fourth field, under "baselines"
        "baselines": [
            ("iu", "iu", base, {}),
            *[
                (f"incctr lambda {x}", "incctr", base, {"baselines": {"incctr_lambda": x}})
                for x in (0.1, 0.2, 0.3, 0.5)
            ],
            *[(f"spmf ratio {x}", "spmf", base, {"baselines": {"spmf_ratio": x}}) for x in (0.25, 0.5, 1.0)],
            *[(f"spmf fraction {x}", "spmf", base, {"baselines": {"spmf_fraction": x}}) for x in (0.05, 0.2)],
            *[(f"sml lr {x}", "sml", base, {"baselines": {"sml": {"lr": x}}}) for x in (1e-3, 1e-2, 1e-4)],
            (
                "sml hidden 16 filters 4,4",
                "sml",
                base,
                {"baselines": {"sml": {"hidden": 16, "filters1": 4, "filters2": 4}}},
            ),
            ("sml paper (plain read-out)", "sml", base, {"baselines": {"sml": {"residual": False}}}),
        ],
    }


def baseline_config(settings: dict[str, Any]) -> BaselineConfig:
    sml = SmlConfig(**settings.get("sml", {}))
    return BaselineConfig(**{**{k: v for k, v in settings.items() if k != "sml"}, "sml": sml})


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--grid", default="base", choices=sorted(grids({})))
    parser.add_argument("--base", type=json_object, default={}, help="JSON base-model settings for the meta grid")
    parser.add_argument("--only", help="labels to run, separated by |")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--pretrained-dir", type=Path, help="keep each Θ_0 here, one folder per data set and base settings"
    )
    args = parser.parse_args(argv)
    try:
        replace(TrainConfig(), **args.base)
    except (TypeError, ValueError) as error:
        parser.error(f"--base: {error}")
    args.entries = grids(args.base)[args.grid]
    if args.only:
        wanted = set(args.only.split("|"))
        unknown = wanted - {entry[0] for entry in args.entries}
        if unknown:
            parser.error(f"--only: no such label in the {args.grid} grid: {', '.join(sorted(unknown))}")
        args.entries = [g for g in args.entries if g[0] in wanted or g is args.entries[0]]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    grid = args.entries
    config = ModelConfig()
    log = encode_log(load_dataset(args.dataset), config)
    # as in `asmg replay`, Θ_0 is pre-trained with the same base settings the updates use
    replays: dict[TrainConfig, Replay] = {}
    rows = []
    for label, method, base, meta in grid:
        train = replace(TrainConfig(), **base)
        if train not in replays:
            where = theta0_dir(args.pretrained_dir, args.dataset, base) if args.pretrained_dir else None
            replays[train] = Replay(log, config, train, pretrained_dir=where)
        replay = replays[train]
        started = time.perf_counter()
        per_seed = []
        meta_settings = {k: v for k, v in meta.items() if k != "baselines"}
        baselines = baseline_config(meta.get("baselines", {}))
        for seed in range(args.seeds):
            results = replay.run(method, seed, meta_settings, baselines=baselines)
            per_seed.append(float(np.mean([r.auc for r in results if r.split == "valid"])))
        rows.append(
            {
                "label": label,
                "method": method,
                "base": base,
                "meta": meta,
                "valid_auc": per_seed,
                "seconds": time.perf_counter() - started,
            }
        )
        diff = np.array(per_seed) - np.array(rows[0]["valid_auc"])
        spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
        print(
            f"{label:<32} valid AUC {np.mean(per_seed):.4f}  paired Δ {diff.mean():+.4f} ± {spread:.4f}"
            f"  ({rows[-1]['seconds']:.0f} s)",
            flush=True,
        )
        if args.out:
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
