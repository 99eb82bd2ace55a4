from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.features import Examples
from trainer.core.model import EmbMLP, logits
from trainer.learning.learner import BaseLearner
from trainer.learning.meta import CoordinateGRU, module_key
from trainer.learning.updaters import make_updater
from trainer.learning.updaters.asmg import COLD, Asmg, _rows_changed, compact_batches, step_weights
from trainer.research.encoding import EncodedLog


def periods(log: EncodedLog, n: int) -> list[Examples]:
    size = len(log) // n
    return [log.examples(i * size, (i + 1) * size) for i in range(n)]


def spy_initial_states(updater: Asmg) -> list[Any]:
    """Record the initial hidden state each meta-training call starts from."""
    seen: list[Any] = []
    original = updater._train_meta

    def recording(window: Any, targets: Any, mixes: Any, h0: Any) -> None:
        seen.append(None if h0 is None else {k: v.clone() for k, v in h0.items()})
        original(window, targets, mixes, h0)

    updater._train_meta = recording  # type: ignore[method-assign]
    return seen


def test_step_weights() -> None:
    assert step_weights("multi", 3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert step_weights("full", 4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert step_weights("unif", 3) == pytest.approx([1 / 3] * 3)
    assert step_weights("single", 3) == [0.0, 0.0, 1.0]
    assert sum(step_weights("multi", 6)) == pytest.approx(1.0)


@pytest.mark.parametrize("cols", [1, 2, 6, 8, 9, 16, 32])
def test_rows_changed_flags_exactly_the_rows_that_differ(cols: int) -> None:
    torch.manual_seed(cols)
    old = torch.randn(50, cols)
    new = old.clone()
    moved = torch.tensor([0, 7, 31, 49])
    new[moved, torch.randint(0, cols, (4,))] += 1e-6  # one coordinate of each, by a hair
    new[3, 0] = -0.0 if old[3, 0] == 0 else old[3, 0]  # an unchanged value rewritten
    expected = torch.zeros(50, dtype=torch.bool)
    expected[moved] = True
    assert torch.equal(_rows_changed(new, old), expected)


def test_compact_batches_score_like_the_full_tables(small_log: EncodedLog, small_config: ModelConfig) -> None:
    params = EmbMLP(small_config).params()
    batches = [small_log.examples(100, 160), small_log.examples(900, 930)]
    rows, compact = compact_batches(batches)
    small = {**params, **{t: params[t][r] for t, r in rows.items()}}
    for full, comp in zip(batches, compact, strict=True):
        torch.testing.assert_close(logits(small, comp, 3), logits(params, full, 3))
    assert len(rows["user_emb"]) < small_config.user_buckets


def test_carried_state_starts_each_window_where_the_last_one_left(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2})
    assert isinstance(updater, Asmg)
    seen = spy_initial_states(updater)
    data = periods(small_log, 6)
    for p in data[:3]:
        updater.update(p)
    assert seen == [None]  # the first window starts from zeros
    stored = {k: v.clone() for k, v in updater.hidden.items()}  # type: ignore[union-attr]
    first_of_next_window = updater.models[0]
    was_live = {t: live.clone() for t, live in updater.live.items()}
    updater.update(data[3])
    assert len(seen) == 2
    for name, value in stored.items():
        torch.testing.assert_close(seen[1][name], value)
    # and the new stored state is one GRU step past the old window's successor, for live rows;
    # the cold sequence's is one step past its old one, and rows turning live start from it
    assert updater.hidden is not None
    expected = updater.generator.step("user_emb", first_of_next_window["user_emb"], stored["user_emb"])  # type: ignore[union-attr, operator]
    live = was_live["user_emb"]
    assert 0 < int(live.sum()) < len(live)
    torch.testing.assert_close(updater.hidden["user_emb"][live], expected[live])
    cold = updater.generator.step("user_emb", torch.zeros(1, 8), stored["user_emb" + COLD])  # type: ignore[union-attr, operator]
    torch.testing.assert_close(updater.hidden["user_emb" + COLD], cold)
    first_layer = first_of_next_window["mlp.0.weight"].reshape(1, -1)
    expected = updater.generator.step("mlp.0.weight", first_layer, stored["mlp.0.weight"])  # type: ignore[union-attr, operator]
    torch.testing.assert_close(updater.hidden["mlp.0.weight"], expected)


def test_a_row_turning_live_starts_from_the_cold_state(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2})
    assert isinstance(updater, Asmg)
    data = periods(small_log, 6)
    for p in data[:3]:
        updater.update(p)
    assert updater.hidden is not None
    fresh = int((~updater.live["user_emb"]).nonzero()[0])  # a hashed row no user has reached yet
    moved = updater.learner.params()["user_emb"][fresh].clone()
    newcomer = data[3].to_dict()
    newcomer["user"] = newcomer["user"].clone()
    newcomer["user"][:20] = fresh  # a new user's first clicks
    updater.update(Examples.from_dict(newcomer))
    assert updater.live["user_emb"][fresh] and not torch.equal(updater.models[-1]["user_emb"][fresh], moved)
    torch.testing.assert_close(updater.hidden["user_emb"][fresh], updater.hidden["user_emb" + COLD][0])
    # the next period's meta step then carries it from there, as a live row
    stored = {k: v.clone() for k, v in updater.hidden.items()}
    first = updater.models[0]["user_emb"][fresh : fresh + 1]
    updater.update(data[4])
    expected = updater.generator.step("user_emb", first, stored["user_emb"][fresh : fresh + 1])  # type: ignore[union-attr, operator]
    torch.testing.assert_close(updater.hidden["user_emb"][fresh : fresh + 1], expected)


def test_zero_strategy_always_starts_from_zeros(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-zero", BaseLearner(small_config, small_train, 0), 0, {"window": 2})
    assert isinstance(updater, Asmg)
    seen = spy_initial_states(updater)
    for p in periods(small_log, 6)[:5]:
        updater.update(p)
    assert seen == [None, None, None]
    assert updater.hidden is None


def test_full_strategy_keeps_the_whole_sequence(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-full", BaseLearner(small_config, small_train, 0), 0, {"window": 2})
    assert isinstance(updater, Asmg)
    for p in periods(small_log, 6)[:5]:
        updater.update(p)
    assert len(updater.models) == 5
    multi = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2})
    assert isinstance(multi, Asmg)
    for p in periods(small_log, 6)[:5]:
        multi.update(p)
    assert len(multi.models) == 2


def test_warmup_serves_iu_until_the_generator_has_trained(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2, "warmup": 2})
    assert isinstance(updater, Asmg)
    served, iu = [], []
    for p in periods(small_log, 6)[:4]:
        served.append(updater.update(p))
        iu.append(updater.learner.params())
    # meta training runs at the 3rd and 4th updates; with warm-up 2 the 4th is the first generated model
    for i in range(3):
        for name, value in iu[i].items():
            assert torch.equal(served[i][name], value)
    assert updater.meta_periods == 2
    assert not torch.equal(served[3]["user_emb"], iu[3]["user_emb"])


def test_rows_iu_never_changed_share_the_cold_sequence(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2})
    assert isinstance(updater, Asmg) and updater.meta.readout == "residual"
    initial = updater.learner.params()
    data = periods(small_log, 6)
    for p in data[:4]:
        served = updater.update(p)
    assert updater.generator is not None
    for table, live in updater.live.items():
        # live: exactly the rows some IU version moved away from the first model
        moved = torch.stack([(m[table] != initial[table]).any(dim=1) for m in updater.models]).any(dim=0)
        assert torch.equal(live, moved) and 0 < int(live.sum()) < len(live)
        # a row never changed serves its own value plus the cold sequence's generated value
        shift = served[table][~live] - updater.models[-1][table][~live]
        torch.testing.assert_close(shift, shift[:1].expand_as(shift))
        assert shift.abs().sum() > 0
    # generating over live rows alone gives what generating over every row gives them
    live_rows = updater.live
    live_only = updater.generate()
    updater.live = {t: torch.ones_like(v) for t, v in live_rows.items()}
    all_rows = updater.generate()
    for table, live in live_rows.items():
        torch.testing.assert_close(all_rows[table][live], live_only[table][live])


def per_tensor_state(state: dict[str, Any], generator: CoordinateGRU) -> dict[str, Any]:
    """``state`` as it was saved when the GRU had its weights, and Adam its
    moments, per weight kind and base-model tensor (``hidden_rz.user_emb``, ...)."""
    widths = [generator.cols[name] for name in generator.names]
    weights = {
        f"{kind}.{module_key(name)}": part.clone()
        for kind, value in state["generator"].items()
        for name, part in zip(generator.names, value.split(widths), strict=True)
    }
    saved, moments = state["meta_optimizer"], {}
    for k in range(len(state["generator"])):
        for j in range(len(widths)):
            moments[k * len(widths) + j] = {
                key: value.split(widths)[j].clone() if value.dim() else value.clone()
                for key, value in saved["state"][k].items()
            }
    (group,) = saved["param_groups"]
    optimizer = {"state": moments, "param_groups": [{**group, "params": list(range(len(moments)))}]}
    return {**state, "generator": weights, "meta_optimizer": optimizer}


@pytest.mark.parametrize("gate_bias", [False, True])
def test_a_state_saved_with_weights_per_tensor_resumes_exactly(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig, gate_bias: bool
) -> None:
    def fresh(seed: int) -> Asmg:
        updater = make_updater(
            "asmg-gru-multi", BaseLearner(small_config, small_train, seed), seed, {"window": 2, "gate_bias": gate_bias}
        )
        assert isinstance(updater, Asmg)
        return updater

    data = periods(small_log, 6)
    original = fresh(0)
    for p in data[:4]:
        original.update(p)
    assert isinstance(original.generator, CoordinateGRU)
    old = per_tensor_state(original.state_dict(), original.generator)
    kinds = len(list(original.generator.parameters()))
    assert len(old["meta_optimizer"]["state"]) == kinds * len(original.generator.names)
    buffer = io.BytesIO()
    torch.save(old, buffer)  # as saved: restored shares no tensor with the original
    restored = fresh(5)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for p in data[4:]:
        expected, got = original.update(p), restored.update(p)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def spy_meta_calls(updater: Asmg) -> list[tuple[list[Any], list[Examples], Any]]:
    """Record each meta-training call's window, targets and initial state, as given."""
    calls: list[tuple[list[Any], list[Examples], Any]] = []
    original = updater._train_meta

    def recording(window: Any, targets: Any, mixes: Any, h0: Any) -> None:
        calls.append((list(window), list(targets), h0))
        original(window, targets, mixes, h0)

    updater._train_meta = recording  # type: ignore[method-assign]
    return calls


def test_meta_replay_trains_on_each_earlier_window_and_the_periods_after_it(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2, "replay": 2})
    assert isinstance(updater, Asmg)
    calls = spy_meta_calls(updater)
    data = periods(small_log, 6)
    versions = []
    for p in data[:4]:
        updater.update(p)
        versions.append(updater.models[-1])
    calls.clear()
    updater.update(data[4])
    # Θ_i trained on data[i]; windows oldest first, each scored on the periods after its versions
    expected = [([0, 1], [1, 2]), ([1, 2], [2, 3]), ([2, 3], [3, 4])]
    assert len(calls) == len(expected)
    for (window, targets, _), (models, after) in zip(calls, expected, strict=True):
        assert all(w is versions[i] for w, i in zip(window, models, strict=True))
        assert all(t is data[i] for t, i in zip(targets, after, strict=True))
    assert calls[0][2] is None and calls[1][2] is None  # earlier windows start from zeros
    assert calls[2][2] is not None  # the newest from the carried state
    assert len(updater.models) == len(updater.periods) == 4  # window + replay kept


def test_meta_replay_grows_with_the_versions_kept_and_off_changes_nothing(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log, 6)

    def served(meta: dict[str, Any]) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
        updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, meta)
        assert isinstance(updater, Asmg)
        calls = spy_meta_calls(updater)
        counts, out = [], []
        for p in data[:5]:
            before = len(calls)
            out.append(updater.update(p))
            counts.append(len(calls) - before)
        return counts, out

    counts, with_replay = served({"window": 2, "replay": 2})
    assert counts == [0, 0, 1, 2, 3]  # as many earlier windows as the kept versions hold
    plain_counts, plain = served({"window": 2})
    zero_counts, zero = served({"window": 2, "replay": 0})
    assert plain_counts == zero_counts == [0, 0, 1, 1, 1]
    for a, b in zip(plain, zero, strict=True):
        for name in a:
            assert torch.equal(a[name], b[name])
    assert not torch.equal(with_replay[-1]["user_emb"], plain[-1]["user_emb"])


def test_meta_replay_share_draws_a_part_of_each_earlier_target(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater(
        "asmg-gru-multi",
        BaseLearner(small_config, small_train, 0),
        0,
        {"window": 2, "replay": 1, "replay_share": 0.25},
    )
    assert isinstance(updater, Asmg)
    calls = spy_meta_calls(updater)
    data = periods(small_log, 6)
    for p in data[:4]:
        updater.update(p)
    (_, replayed, _), (_, newest, _) = calls[-2:]
    assert [len(t) for t in replayed] == [round(0.25 * len(data[i])) for i in (1, 2)]
    assert [len(t) for t in newest] == [len(data[2]), len(data[3])]
    users = set(data[1].user.tolist())
    assert set(replayed[0].user.tolist()) <= users


@pytest.mark.parametrize("bad", [{"replay": -1}, {"replay_share": 0.0}, {"replay_share": 1.5}])
def test_meta_replay_settings_are_checked(bad: dict[str, Any]) -> None:
    from trainer.learning.updaters.asmg import MetaConfig

    with pytest.raises(ValueError, match="replay"):
        MetaConfig(**bad)


def test_a_state_with_meta_replay_resumes_exactly(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    meta = {"window": 2, "replay": 2, "replay_share": 0.5}

    def fresh(seed: int) -> Asmg:
        updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, seed), seed, meta)
        assert isinstance(updater, Asmg)
        return updater

    data = periods(small_log, 7)
    original = fresh(0)
    for p in data[:4]:
        original.update(p)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    restored = fresh(3)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for p in data[4:]:
        expected, got = original.update(p), restored.update(p)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def spy_held_losses(updater: Asmg) -> tuple[list[list[float]], list[dict[str, Any]]]:
    """Each meta-training call's held-back losses (before any epoch, then after each), and the last snapshot taken."""
    calls: list[list[float]] = []
    snapshots: list[dict[str, Any]] = []
    held, snapshot, train = updater._held_loss, updater._generator_snapshot, updater._train_meta

    def recording_train(*args: Any) -> None:
        calls.append([])
        train(*args)

    def recording_held(*args: Any) -> float | None:
        loss = held(*args)
        assert loss is not None
        calls[-1].append(loss)
        return loss

    def recording_snapshot() -> dict[str, Any]:
        snapshots[:] = [snapshot()]
        return snapshots[0]

    updater._train_meta = recording_train  # type: ignore[method-assign, assignment]
    updater._held_loss = recording_held  # type: ignore[method-assign, assignment]
    updater._generator_snapshot = recording_snapshot  # type: ignore[method-assign]
    return calls, snapshots


@pytest.mark.parametrize("lr", [1e-3, 3.0])
def test_the_stopping_rule_keeps_only_epochs_that_lower_the_held_back_loss(
    lr: float, small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    epochs = 4
    updater = make_updater(
        "asmg-gru-multi",
        BaseLearner(small_config, small_train, 0),
        0,
        {"window": 2, "holdout": 0.2, "epochs": epochs, "lr": lr, "batch_size": 64},
    )
    assert isinstance(updater, Asmg)
    calls, snapshots = spy_held_losses(updater)
    for p in periods(small_log, 6)[:5]:
        updater.update(p)
        if calls and calls[-1]:
            # what is left is the best state seen: the last snapshot
            for name, value in updater.generator.state_dict().items():
                assert torch.equal(value, snapshots[0]["generator"][name])
    assert len(calls) == 3
    for losses in calls:
        ran = len(losses) - 1
        assert 1 <= ran <= epochs
        assert all(b < a for a, b in itertools.pairwise(losses[:-1]))  # kept epochs each improved
        if ran < epochs:
            assert losses[-1] >= min(losses[:-1])  # the epoch that stopped it did not
    stopped = [len(losses) - 1 < epochs for losses in calls]
    assert any(stopped) == (lr > 1)  # a step far too large is undone; small steps keep helping here


def test_the_stopping_rule_off_runs_every_epoch(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater(
        "asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2, "epochs": 3, "batch_size": 64}
    )
    assert isinstance(updater, Asmg)
    steps = 0
    step = updater.meta_optimizer.step

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal steps
        steps += 1
        return step(*args, **kwargs)

    updater.meta_optimizer.step = counting  # type: ignore[method-assign]
    data = periods(small_log, 6)
    for p in data[:3]:
        updater.update(p)
    assert steps == 3 * -(-len(data[2]) // 64)


@pytest.mark.parametrize("blend", [0.5, 1.5])
def test_blend_serves_that_far_along_the_step_from_iu_to_the_generated_model(
    blend: float, small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    def run(meta: dict[str, Any]) -> tuple[Asmg, list[dict[str, torch.Tensor]]]:
        updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, meta)
        assert isinstance(updater, Asmg)
        return updater, [updater.update(p) for p in periods(small_log, 6)[:5]]

    plain, generated = run({"window": 2, "blend": 1.0})
    blended, served = run({"window": 2, "blend": blend})
    iu = plain.learner.params()
    assert plain.generating
    for name in iu:
        # the generator trains the same either way: only what is served moves
        torch.testing.assert_close(served[-1][name], iu[name] + blend * (generated[-1][name] - iu[name]))
    assert not torch.equal(served[-1]["mlp.0.weight"], generated[-1]["mlp.0.weight"])
    # the gate judges the model that would be served
    gate = blended.gate_scores(periods(small_log, 6)[5])
    assert gate is not None
    assert gate.generated == score_of(served[-1], periods(small_log, 6)[5], small_config)


def score_of(params: dict[str, torch.Tensor], period: Examples, config: ModelConfig) -> float:
    from trainer.core.model import score

    return score(params, period, config.n_layers)[0]


@pytest.mark.parametrize("blend", [0.0, -0.5, 2.5])
def test_blend_is_checked(blend: float) -> None:
    from trainer.learning.updaters.asmg import MetaConfig

    with pytest.raises(ValueError, match="blend"):
        MetaConfig(blend=blend)


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan")])
def test_meta_and_base_learning_rates_are_checked(lr: float) -> None:
    from trainer.learning.updaters.asmg import MetaConfig

    with pytest.raises(ValueError, match="lr"):
        MetaConfig(lr=lr)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=lr)


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"epochs": 0}])
def test_base_fit_settings_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(**bad)
