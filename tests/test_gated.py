"""The service's quality gate, replayed as a method of its own."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.features import Examples
from trainer.core.model import Params, score
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters import make_updater
from trainer.learning.updaters.asmg import Asmg, GateScores
from trainer.learning.updaters.gated import Gated
from trainer.research.encoding import EncodedLog

META = {"window": 2, "batch_size": 64}


def periods(log: EncodedLog, n: int = 7) -> list[Examples]:
    size = len(log) // n
    return [log.examples(i * size, (i + 1) * size) for i in range(n)]


def same(a: Params, b: Params) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def gated(config: ModelConfig, train: TrainConfig) -> Gated:
    updater = make_updater("asmg-gru-multi+gate", BaseLearner(config, train, 3), 3, META)
    assert isinstance(updater, Gated)
    return updater


def test_gate_scores_are_both_candidates_on_the_period_before_training_on_it(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = make_updater("asmg-gru-multi", BaseLearner(small_config, small_train, 3), 3, META)
    assert isinstance(updater, Asmg)
    data = periods(small_log)
    served = None
    for p in data[:4]:
        if served is not None and updater.generating:
            scores = updater.gate_scores(p)
            assert scores == GateScores(score(served, p, 3)[0], score(updater.learner.params(), p, 3)[0])
        else:
            assert updater.gate_scores(p) is None
        served = updater.update(p)
    assert updater.generating


def test_the_gated_policy_serves_what_won_last_period_and_iu_without_evidence(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    policy, always = gated(small_config, small_train), gated(small_config, small_train).asmg
    decisions: list[GateScores | None] = []
    real = policy.asmg.gate_scores

    def recording(period: Examples) -> GateScores | None:
        decisions.append(real(period))
        return decisions[-1]

    policy.asmg.gate_scores = recording  # type: ignore[method-assign]
    for p in periods(small_log):
        served, generated = policy.update(p), always.update(p)
        iu = always.learner.params()
        scores = decisions[-1]
        if scores is not None and always.generating and scores.generated >= scores.iu:
            assert same(served, generated) and not same(served, iu)
        else:
            assert same(served, iu)
    # the generator trains on every period either way: the policy's state is the method's
    assert same(policy.asmg.generate(), always.generate())
    assert decisions[:3] == [None, None, None]  # warming up, then the first generated model: IU


@pytest.mark.parametrize("winner", ["generated", "iu"])
def test_the_gate_follows_the_scores(
    winner: str, small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    policy = gated(small_config, small_train)
    data = periods(small_log)
    for p in data[:4]:
        policy.update(p)
    assert policy.asmg.generating

    def fixed(period: Examples) -> GateScores:
        return GateScores(0.7, 0.6) if winner == "generated" else GateScores(0.6, 0.7)

    policy.asmg.gate_scores = fixed  # type: ignore[method-assign]
    before = policy.served_generated
    served = policy.update(data[4])
    iu_served = same(served, policy.learner.params())
    assert iu_served == (winner == "iu")
    assert policy.served_generated == before + (winner == "generated")


def test_unknown_gated_names_are_refused(small_config: ModelConfig, small_train: TrainConfig) -> None:
    from trainer.learning.updaters import UnknownMethod

    for name in ("iu+gate", "spmf+gate", "asmg-gru-nope+gate"):
        with pytest.raises(UnknownMethod):
            make_updater(name, BaseLearner(small_config, small_train, 0), 0)


def test_replay_cli_takes_gated_names(tmp_path: Any) -> None:
    from trainer.research.cli import build_parser

    args = build_parser().parse_args(["replay", "--synthetic", "--methods", "iu,asmg-linear+gate"])
    assert args.methods == ["iu", "asmg-linear+gate"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "--synthetic", "--methods", "bu-3+gate"])


def test_the_ensemble_averages_the_two_models_logits_once_generating(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    from trainer.core.metrics import auc
    from trainer.core.model import logits
    from trainer.learning.updaters.gated import Ensembled

    updater = make_updater("asmg-gru-multi+ens", BaseLearner(small_config, small_train, 3), 3, META)
    assert isinstance(updater, Ensembled)
    data = periods(small_log)
    for now, after in itertools.pairwise(data):
        served = updater.update(now)
        iu = updater.learner.params()
        got = updater.score(served, after)
        if not updater.asmg.generating:
            assert got == score(iu, after, 3)
            continue
        mean = torch.sigmoid((logits(served, after, 3) + logits(iu, after, 3)) / 2)
        assert got[0] == pytest.approx(auc(after.label.numpy(), mean.numpy()), abs=1e-6)
        assert got[0] not in (score(served, after, 3)[0], score(iu, after, 3)[0])
    assert updater.asmg.generating


@pytest.mark.parametrize("method", ["iu+prev", "asmg-gru-multi+prev"])
def test_the_previous_model_control_averages_each_model_with_the_one_served_before(
    method: str, small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    from trainer.core.metrics import auc
    from trainer.core.model import logits
    from trainer.learning.updaters.gated import WithPrevious

    updater = make_updater(method, BaseLearner(small_config, small_train, 3), 3, META)
    plain = make_updater(method.removesuffix("+prev"), BaseLearner(small_config, small_train, 3), 3, META)
    assert isinstance(updater, WithPrevious)
    data = periods(small_log)
    before: Params | None = None
    for now, after in itertools.pairwise(data):
        served = updater.update(now)
        assert same(served, plain.update(now))  # the method itself is untouched
        got = updater.score(served, after)
        if before is None:
            assert got == score(served, after, 3)
        else:
            mean = torch.sigmoid((logits(served, after, 3) + logits(before, after, 3)) / 2)
            assert got[0] == pytest.approx(auc(after.label.numpy(), mean.numpy()), abs=1e-6)
            assert got[0] != score(served, after, 3)[0]
        # a copy: IU trains the served tensors in place on the next period
        before = {name: value.clone() for name, value in served.items()}


def test_the_previous_model_control_takes_any_method_and_ensembles_only_asmg(
    small_config: ModelConfig, small_train: TrainConfig
) -> None:
    from trainer.core.methods import is_replay_method

    assert all(is_replay_method(name) for name in ("iu+prev", "bu-3+prev", "spmf+prev", "asmg-linear+prev"))
    assert not any(is_replay_method(name) for name in ("iu+ens", "nope+prev", "iu+prev+prev"))


def test_the_previous_model_control_resumes_with_its_partner(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    import io

    data = periods(small_log)
    original = make_updater("iu+prev", BaseLearner(small_config, small_train, 3), 3, META)
    for p in data[:3]:
        original.update(p)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    restored = make_updater("iu+prev", BaseLearner(small_config, small_train, 9), 9, META)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    served, again = original.update(data[3]), restored.update(data[3])
    assert original.score(served, data[4]) == restored.score(again, data[4])
    assert restored.score(again, data[4]) != score(again, data[4], 3)
