"""How far to take the generator's step, per kind of tensor and per period.

The served model is θ_IU + B·(θ* − θ_IU). The blend B does not change what
either model trains on (the generator trains on the whole θ*), so one replay
of GRU multi per seed scores every blend at once: each period, every variant
below is made from the same θ* and θ_IU and scored on the next period.

Variants:

- ``global B``: one blend for every tensor (B = 0 is IU's model, 1 the paper's);
- ``user/item/mlp Bu,Bi,Bm``: a blend per kind of tensor: the user-id table,
  the item and category tables, the MLP's weights and biases;
- ``adaptive``: each period, the global blend whose mean AUC over the periods
  scored so far (the generated models' own, out of sample) is best; no period's
  choice uses that period's labels.

``--late-start P`` leaves the generator untrained for its first P periods
(they serve IU's model), and ``--warm-start W`` trains it first over the last W
pre-training periods (``Replay.warm_generator``): how much its gain owes to how
long it has trained. ``--early-lr LR --early-periods N`` trains it with meta
learning rate LR for its first N periods, then with the chosen one.

Choose on validation (scored periods 22–24); the test periods of the chosen
variants are printed beside the default (global 0.5) for the record.

    python benchmarks/blend_sweep.py --dataset ml-1m --seeds 5 --base '{"batch_size": 256}'
    python benchmarks/blend_sweep.py --dataset ml-100k --seeds 5 --base '{"batch_size": 128}' \
        --meta '{"lr": 0.01, "gate_bias": false}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.model import Params, score
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters import meta_config
from trainer.learning.updaters.asmg import Asmg, MetaConfig
from trainer.research.cli import json_object, positive_float, positive_int
from trainer.research.datasets import load_dataset
from trainer.research.encoding import encode_log
from trainer.research.replay import Protocol, Replay, theta0_dir

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
KIND_LEVELS = LEVELS[1:]  # per kind: 64 variants, each scored every period
ADAPTIVE = "adaptive"
DEFAULT = "global 0.5"


def kind(tensor: str) -> str:
    """Which blend a tensor takes: ``user``, ``item`` (items and categories) or ``mlp``."""
    if tensor == "user_emb":
        return "user"
    return "item" if tensor.endswith("_emb") else "mlp"


def variants(per_kind: bool = True) -> dict[str, dict[str, float]]:
    """Each variant's blend per kind."""
    found = {f"global {b:g}": dict.fromkeys(("user", "item", "mlp"), b) for b in LEVELS}
    if not per_kind:
        return found
    for bu, bi, bm in itertools.product(KIND_LEVELS, repeat=3):
        if not bu == bi == bm:  # those are the global blends
            found[f"user/item/mlp {bu:g},{bi:g},{bm:g}"] = {"user": bu, "item": bi, "mlp": bm}
    return found


def blended(iu: Params, generated: Params, blends: Mapping[str, float]) -> Params:
    return {name: torch.lerp(iu[name], value, blends[kind(name)]) for name, value in generated.items()}


class Scheduled(Asmg):
    """GRU multi whose generator trains only from its ``late``-th meta period on
    (until then its untrained residual read-out returns IU's newest model), and
    with ``early_lr`` for its first ``early_periods`` periods of training."""

    def __init__(
        self,
        learner: BaseLearner,
        meta: MetaConfig,
        seed: int,
        late: int = 0,
        early_lr: float | None = None,
        early_periods: int = 0,
    ) -> None:
        super().__init__(learner, meta, seed)
        self.late = late
        self.early_lr = early_lr
        self.early_periods = early_periods

    def _train_meta(self, *args: Any) -> None:
        trained = self.meta_periods - self.late  # periods the generator has trained on so far
        if trained < 0:
            return
        early = self.early_lr is not None and trained < self.early_periods
        for group in self.meta_optimizer.param_groups:
            group["lr"] = self.early_lr if early else self.meta.lr
        super()._train_meta(*args)


def sweep_seed(
    replay: Replay,
    seed: int,
    meta: MetaConfig,
    blends: Mapping[str, Mapping[str, float]],
    late: int = 0,
    warm: int = 0,
    early_lr: float | None = None,
    early_periods: int = 0,
) -> list[dict]:
    """Per scored period with a generated model: its split and every variant's AUC.
    ``meta`` should serve the generated model whole (blend 1): the variants blend it."""
    learner = replay.pretrained(seed)
    updater = Scheduled(learner, meta, seed, late, early_lr, early_periods)
    replay.warm_generator(updater, seed, warm)
    n_layers = learner.model.n_layers
    first = replay.protocol.pretrain_periods + 1
    rows = []
    for t in range(first, replay.protocol.periods):
        generated = updater.update(replay.periods[t])
        if not updater.generating:  # warm-up: IU's model is served, nothing to blend
            continue
        iu = learner.params()
        target = replay.periods[t + 1]
        aucs = {name: score(blended(iu, generated, b), target, n_layers)[0] for name, b in blends.items()}
        rows.append({"period": t + 1, "split": replay.protocol.split(t + 1), "auc": aucs})
    return rows


def with_adaptive(rows: Sequence[dict]) -> None:
    """Add the adaptive variant to each period: the global blend with the best mean AUC so far."""
    globals_ = [name for name in rows[0]["auc"] if name.startswith("global")]
    for i, row in enumerate(rows):
        seen = rows[:i]  # nothing scored yet: the default
        pick = max(globals_, key=lambda name: np.mean([r["auc"][name] for r in seen])) if seen else DEFAULT
        row["auc"][ADAPTIVE] = row["auc"][pick]
        row["adaptive_pick"] = pick


def split_means(per_seed: Sequence[Sequence[dict]], split: str) -> dict[str, np.ndarray]:
    """Per variant, each seed's mean AUC over ``split``'s periods."""
    names = per_seed[0][0]["auc"]
    return {
        name: np.array([np.mean([r["auc"][name] for r in rows if r["split"] == split]) for rows in per_seed])
        for name in names
    }


def paired(values: np.ndarray, baseline: np.ndarray) -> str:
    diff = values - baseline
    spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
    return f"{diff.mean():+.4f} ± {spread:.4f}"


def line(label: str, values: np.ndarray, iu: np.ndarray, default: np.ndarray) -> str:
    """A variant's mean AUC and its paired differences from IU and from the default blend."""
    return f"{label:<34} AUC {values.mean():.4f}  Δ vs IU {paired(values, iu)}  vs default {paired(values, default)}"


def non_negative_int(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return n


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--base", type=json_object, default={}, help="JSON base-model settings, as in tune.py")
    parser.add_argument(
        "--meta", type=json_object, default={}, help="JSON generator settings over the chosen ones (not the blend)"
    )
    parser.add_argument(
        "--late-start", type=non_negative_int, default=0, help="meta periods the generator stays untrained"
    )
    parser.add_argument(
        "--warm-start",
        type=non_negative_int,
        default=0,
        help="pre-training periods the generator first trains over (Replay.warm_generator)",
    )
    parser.add_argument("--early-lr", type=positive_float, help="the meta lr for the generator's first periods")
    parser.add_argument(
        "--early-periods", type=non_negative_int, default=0, help="periods of training that use --early-lr"
    )
    parser.add_argument("--global-only", action="store_true", help="score the global blends only (faster)")
    parser.add_argument("--top", type=positive_int, default=8, help="validation's best variants to print")
    parser.add_argument("--out", type=Path, help="write every period's AUC per variant here (JSON)")
    parser.add_argument("--pretrained-dir", type=Path, help="keep each Θ_0 here, as tune.py does")
    args = parser.parse_args(argv)
    if "blend" in args.meta:
        parser.error("--meta: the blend is what the sweep varies; leave it out")
    try:
        args.meta_config = meta_config("asmg-gru-multi", {**args.meta, "blend": 1.0})
    except (TypeError, ValueError) as error:
        parser.error(f"--meta: {error}")
    try:
        args.train_config = replace(TrainConfig(), **args.base)
    except (TypeError, ValueError) as error:
        parser.error(f"--base: {error}")
    if (args.early_lr is None) != (args.early_periods == 0):
        parser.error("--early-lr and --early-periods go together")
    pretrain_periods = Protocol().pretrain_periods  # the protocol main() replays
    if args.warm_start >= pretrain_periods:
        parser.error(f"--warm-start must leave a pre-training period to pre-train on (below {pretrain_periods})")
    if args.late_start and args.meta_config.readout != "residual":
        parser.error("--late-start needs the residual read-out (an untrained plain one is noise)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    config = ModelConfig()
    replay = Replay(
        encode_log(load_dataset(args.dataset), config),
        config,
        args.train_config,
        pretrained_dir=theta0_dir(args.pretrained_dir, args.dataset, args.base) if args.pretrained_dir else None,
    )
    blends = variants(per_kind=not args.global_only)
    per_seed = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        rows = sweep_seed(
            replay,
            seed,
            args.meta_config,
            blends,
            args.late_start,
            args.warm_start,
            args.early_lr,
            args.early_periods,
        )
        with_adaptive(rows)
        per_seed.append(rows)
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.out:
            args.out.write_text(json.dumps(per_seed) + "\n")
    report(per_seed, args.top)
    return 0


def report(per_seed: Sequence[Sequence[dict]], top: int) -> None:
    valid, test = split_means(per_seed, "valid"), split_means(per_seed, "test")
    iu_valid, iu_test = valid["global 0"], test["global 0"]
    ranked = sorted(valid, key=lambda name: -valid[name].mean())
    print(f"validation, {len(per_seed)} seeds, paired against IU (global 0):")
    for name in dict.fromkeys([*ranked[:top], DEFAULT, "global 1", ADAPTIVE]):
        print(line(name, valid[name], iu_valid, valid[DEFAULT]))
    print("test, the default, validation's best and the adaptive blend:")
    for name in dict.fromkeys([DEFAULT, ranked[0], "global 1", ADAPTIVE]):
        print(line(name, test[name], iu_test, test[DEFAULT]))
    picks = [r["adaptive_pick"] for rows in per_seed for r in rows if r["split"] == "test"]
    print("adaptive picks on test periods:", {p: picks.count(p) for p in sorted(set(picks))})


if __name__ == "__main__":
    sys.exit(main())
