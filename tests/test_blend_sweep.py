from __future__ import annotations

import pytest
import torch

from tests.benchmark_scripts import load_benchmark, refusal
from trainer.core.config import ModelConfig, TrainConfig
from trainer.learning.updaters import meta_config
from trainer.research.encoding import encode_log
from trainer.research.replay import Protocol, Replay
from trainer.research.synthetic import synthetic_events

CONFIG = ModelConfig(user_buckets=256, item_buckets=256, category_buckets=32, history_length=5)
# 2 pre-training periods, then 6 updates; the generator first trains at the 4th (its window full) and is scored
# on periods 7–9
PROTOCOL = Protocol(pretrain_periods=2, pretrain_epochs=1, train_periods=4, valid_periods=1, test_periods=1)
META = {"lr": 1e-2, "batch_size": 64}


@pytest.fixture(scope="module")
def replay() -> Replay:
    table = synthetic_events(n_users=40, n_items=60, n_periods=PROTOCOL.periods, events_per_period=160, seed=1)
    return Replay(encode_log(table, CONFIG), CONFIG, TrainConfig(lr=1e-2, batch_size=64), PROTOCOL)


def test_global_0_scores_as_iu_and_global_1_as_the_generated_model(replay: Replay) -> None:
    sweep = load_benchmark("blend_sweep")
    blends = {name: b for name, b in sweep.variants(per_kind=False).items() if name in ("global 0", "global 1")}
    rows = sweep.sweep_seed(replay, 0, meta_config("asmg-gru-multi", {**META, "blend": 1.0}), blends)
    iu = {r.period: r.auc for r in replay.run("iu", 0)}
    generated = {r.period: r.auc for r in replay.run("asmg-gru-multi", 0, {**META, "blend": 1.0})}
    assert [r["period"] for r in rows] == [7, 8, 9]  # from the first generated model on
    assert [r["auc"]["global 0"] for r in rows] == pytest.approx([iu[r["period"]] for r in rows], abs=1e-9)
    assert [r["auc"]["global 1"] for r in rows] == pytest.approx([generated[r["period"]] for r in rows], abs=1e-9)
    assert any(r["auc"]["global 0"] != r["auc"]["global 1"] for r in rows)


def test_a_late_start_serves_iu_until_the_generator_trains(replay: Replay) -> None:
    sweep = load_benchmark("blend_sweep")
    blends = sweep.variants(per_kind=False)
    rows = sweep.sweep_seed(replay, 0, meta_config("asmg-gru-multi", {**META, "blend": 1.0}), blends, late=2)
    # meta periods 1 and 2 leave the residual read-out at zero: every blend is IU's model
    for row in rows[:2]:
        assert len(set(row["auc"].values())) == 1
    assert len(set(rows[-1]["auc"].values())) > 1


def test_the_generator_trains_with_the_early_lr_for_its_first_periods_only(replay: Replay) -> None:
    sweep = load_benchmark("blend_sweep")
    meta = meta_config("asmg-gru-multi", {**META, "blend": 1.0})
    updater = sweep.Scheduled(replay.pretrained(0), meta, 0, late=1, early_lr=0.05, early_periods=2)
    rates = []
    for t in range(PROTOCOL.pretrain_periods + 1, PROTOCOL.periods + 1):
        updater.update(replay.periods[t])
        rates.append((updater.meta_periods, updater.meta_optimizer.param_groups[0]["lr"]))
    # meta period 1 is skipped (late start), 2 and 3 train with the early lr, 4 with the chosen one
    assert [rate for periods, rate in rates if periods >= 2] == [0.05, 0.05, META["lr"]]


def test_each_kind_of_tensor_takes_its_own_blend() -> None:
    sweep = load_benchmark("blend_sweep")
    iu = {"user_emb": torch.zeros(2, 2), "item_emb": torch.zeros(2, 2), "cat_emb": torch.zeros(1, 2)}
    iu["mlp.0.weight"] = torch.zeros(1, 4)
    generated = {name: torch.ones_like(value) for name, value in iu.items()}
    mixed = sweep.blended(iu, generated, {"user": 0.25, "item": 0.5, "mlp": 1.0})
    assert {name: float(value.unique()) for name, value in mixed.items()} == {
        "user_emb": 0.25,
        "item_emb": 0.5,
        "cat_emb": 0.5,
        "mlp.0.weight": 1.0,
    }
    names = sweep.variants()
    assert len(names) == len(sweep.LEVELS) + len(sweep.KIND_LEVELS) ** 3 - len(sweep.KIND_LEVELS)
    assert len({tuple(b.values()) for b in names.values()}) == len(names)  # no blend twice


def test_the_adaptive_blend_chooses_from_earlier_periods_only() -> None:
    sweep = load_benchmark("blend_sweep")
    aucs = [
        {"global 0": 0.6, "global 0.5": 0.5, "global 1": 0.7},
        {"global 0": 0.9, "global 0.5": 0.5, "global 1": 0.5},
        {"global 0": 0.5, "global 0.5": 0.6, "global 1": 0.8},
    ]
    rows = [{"period": p, "split": "test", "auc": dict(a)} for p, a in enumerate(aucs)]
    sweep.with_adaptive(rows)
    # the first period has nothing before it; then the best mean so far, never the period's own
    assert [r["adaptive_pick"] for r in rows] == ["global 0.5", "global 1", "global 0"]
    assert [r["auc"]["adaptive"] for r in rows] == [0.5, 0.5, 0.5]


def test_the_report_pairs_each_variant_with_iu_and_with_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    sweep = load_benchmark("blend_sweep")
    per_seed = [
        [
            {"split": split, "auc": {"global 0": 0.70, "global 0.5": 0.70 + d, "global 1": 0.70 + 2 * d}}
            for split in ("valid", "test")
        ]
        for d in (0.001, 0.003)
    ]
    for rows in per_seed:
        sweep.with_adaptive(rows)
    sweep.report(per_seed, top=1)
    lines = capsys.readouterr().out.splitlines()
    best = next(line for line in lines if line.startswith("global 1 "))
    # global 1 gains 0.002 and 0.006 over IU and 0.001 and 0.003 over global 0.5
    assert "Δ vs IU +0.0040 ± 0.0028" in best and "vs default +0.0020 ± 0.0014" in best


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--meta", '{"blend": 0.5}'], "the blend is what the sweep varies"),
        (["--meta", "{"], "not JSON"),
        (["--meta", "[1]"], "must be a JSON object"),
        (["--meta", '{"lr": 0}'], "lr must be positive"),
        (["--base", '{"batch": 3}'], "--base"),
        (["--late-start", "-1"], "must not be negative"),
        (["--warm-start", "10"], "must leave a pre-training period"),
        (["--late-start", "2", "--meta", '{"readout": "plain"}'], "needs the residual read-out"),
        (["--seeds", "0"], "must be a positive integer"),
        (["--early-lr", "0", "--early-periods", "2"], "must be a positive number"),
        (["--early-lr", "inf", "--early-periods", "2"], "must be a positive number"),
        (["--early-lr", "0.01"], "go together"),
        (["--early-periods", "3"], "go together"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in refusal(load_benchmark("blend_sweep").main, argv, capsys)
