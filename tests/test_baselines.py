"""IncCTR and SPMF: their defining equivalences and their sampling."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.test_update_contract import assert_same, periods, run
from trainer.core.config import BaselineConfig, ModelConfig, SmlConfig, TrainConfig
from trainer.core.model import EmbMLP, logits, predict
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters import make_updater
from trainer.learning.updaters.baselines import Spmf
from trainer.learning.updaters.sml import Sml, stack_inputs
from trainer.research.encoding import EncodedLog


def learner(config: ModelConfig, train: TrainConfig) -> BaseLearner:
    return BaseLearner(config, train, 3)


def test_incctr_with_zero_weight_is_iu(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log, 4)
    iu = run(make_updater("iu", learner(small_config, small_train), 3), data)
    inc = run(
        make_updater("incctr", learner(small_config, small_train), 3, baselines=BaselineConfig(incctr_lambda=0.0)), data
    )
    assert_same(iu[-1], inc[-1])
    distilled = run(make_updater("incctr", learner(small_config, small_train), 3, baselines=BaselineConfig(0.5)), data)
    assert not torch.equal(distilled[-1]["mlp.0.weight"], iu[-1]["mlp.0.weight"])


def test_incctr_full_weight_keeps_the_previous_models_scores(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log, 2)
    start = learner(small_config, small_train)
    before = predict(start.params(), data[1], 2 + 1)
    iu = make_updater("iu", learner(small_config, small_train), 3)
    teacher_only = make_updater("incctr", start, 3, baselines=BaselineConfig(incctr_lambda=1.0))
    drift_iu = (predict(iu.update(data[1]), data[1], 3) - before).abs().mean()
    drift_kd = (predict(teacher_only.update(data[1]), data[1], 3) - before).abs().mean()
    assert drift_kd < drift_iu / 2  # trained only towards its own scores, it barely moves


def test_spmf_with_zero_ratio_is_iu(small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig) -> None:
    data = periods(small_log, 4)
    iu = run(make_updater("iu", learner(small_config, small_train), 3), data)
    spmf = make_updater(
        "spmf", learner(small_config, small_train), 3, baselines=BaselineConfig(spmf_ratio=0.0), pretrain=data[0]
    )
    assert_same(iu[-1], run(spmf, data)[-1])
    replaying = make_updater("spmf", learner(small_config, small_train), 3, pretrain=data[0])
    assert not torch.equal(run(replaying, data)[-1]["mlp.0.weight"], iu[-1]["mlp.0.weight"])


def test_spmf_reservoir_holds_a_bounded_uniform_sample(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log, 6)
    spmf = Spmf(learner(small_config, small_train), BaselineConfig(spmf_fraction=0.05), 3, pretrain=data[0])
    assert spmf.capacity == -(-len(data[0]) * 5 // 100)
    assert spmf.reservoir is not None and len(spmf.reservoir) == spmf.capacity
    for period in data[1:]:
        spmf.update(period)
    assert spmf.reservoir is not None and len(spmf.reservoir) == spmf.capacity
    assert spmf.seen == sum(len(p) for p in data)
    # clicks and non-clicks in about the stream's proportion
    stream_rate = float(torch.cat([p.label for p in data]).mean())
    assert abs(float(spmf.reservoir.label.mean()) - stream_rate) < 0.15
    # later periods' positives got into the reservoir too
    later_users = set(torch.cat([p.user for p in data[3:]]).tolist())
    assert later_users & set(spmf.reservoir.user.tolist())


def test_spmf_draws_low_scored_samples_more_often(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log, 2)
    spmf = Spmf(learner(small_config, small_train), BaselineConfig(spmf_fraction=0.5), 3, pretrain=data[0])
    assert spmf.reservoir is not None
    scores = predict(spmf.learner.params(), spmf.reservoir, 3)
    draws = torch.cat([predict(spmf.learner.params(), spmf._draw(10), 3) for _ in range(200)])  # type: ignore[arg-type]
    assert draws.mean() < scores.mean()


def test_sml_stacks_previous_new_and_their_scaled_product() -> None:
    previous = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    new = torch.tensor([[1.0, 2.0], [5.0, 6.0]])
    x = stack_inputs(previous, new)
    assert x.shape == (2, 3, 2)
    assert torch.equal(x[:, 0], previous) and torch.equal(x[:, 1], new)
    torch.testing.assert_close(x[0, 2], torch.tensor([3.0 * 1 / 5, 4.0 * 2 / 5]))
    torch.testing.assert_close(x[1, 2], torch.tensor([0.0, 6.0]))


def test_sml_transfer_layers_and_shapes(small_config: ModelConfig, small_train: TrainConfig) -> None:
    sml = Sml(learner(small_config, small_train), SmlConfig(filters1=4, filters2=2, hidden=5), 3)
    module = sml._module("item_emb")
    assert module.conv1.kernel_size == (3, 1) and module.conv1.out_channels == 4
    assert module.conv2.out_channels == 2 and module.dense1.in_features == 2 * small_config.embedding_dim
    assert module.dense1.out_features == 5 and module.dense2.out_features == small_config.embedding_dim
    assert sml._module("mlp.0.weight").dense2.out_features == small_config.mlp_input  # a weight matrix's rows


def test_sml_starts_as_iu_then_learns_a_transfer(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log, 4)
    iu = make_updater("iu", learner(small_config, small_train), 3)
    sml = make_updater("sml", learner(small_config, small_train), 3)
    assert isinstance(sml, Sml)
    # residual read-out: before the transfer has trained, W_t = Ŵ_t, the IU model
    assert_same(iu.update(data[0]), sml.update(data[0]))
    served = sml.update(data[1])  # the transfer trains on data[1] towards it
    assert sml.pair is not None
    assert not torch.equal(served["mlp.0.weight"], sml.pair[1]["mlp.0.weight"])
    assert sml.last_meta_seconds > 0
    plain = make_updater(
        "sml", learner(small_config, small_train), 3, baselines=BaselineConfig(sml=SmlConfig(residual=False))
    )
    assert not torch.equal(plain.update(data[0])["mlp.0.weight"], iu.learner.params()["mlp.0.weight"])


def test_mf_base_model_is_a_dot_product_plus_biases(small_log: EncodedLog, small_config: ModelConfig) -> None:
    config = replace(small_config, kind="mf")
    model = EmbMLP(config)
    assert set(dict(model.named_parameters())) == {"user_emb", "item_emb", "bias"}
    assert model.user_emb.shape == (config.user_buckets, config.embedding_dim + 1) and config.n_layers == 0
    with torch.no_grad():
        model.user_emb.normal_()
        model.item_emb.normal_()
        model.bias.fill_(0.3)
    ex = small_log.examples(0, 5)
    u, i = model.user_emb[ex.user.long()], model.item_emb[ex.item.long()]
    expected = (u[:, :-1] * i[:, :-1]).sum(-1) + u[:, -1] + i[:, -1] + 0.3
    torch.testing.assert_close(logits(model.params(), ex, 0), expected.detach())


def test_sml_mf_needs_the_mf_base_model(small_config: ModelConfig, small_train: TrainConfig) -> None:
    with pytest.raises(ValueError, match="mf base model"):
        make_updater("sml-mf", learner(small_config, small_train), 3)
