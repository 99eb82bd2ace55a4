"""One contract every update method passes."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.features import Examples
from trainer.core.methods import REPLAY_METHODS
from trainer.core.model import Params
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters import Updater, base_model_kind, make_updater
from trainer.research.encoding import EncodedLog

META = {"window": 2, "batch_size": 64}


def periods(log: EncodedLog, n: int = 6) -> list[Examples]:
    size = len(log) // n
    return [log.examples(i * size, (i + 1) * size) for i in range(n)]


def fresh(method: str, config: ModelConfig, train: TrainConfig, seed: int = 7) -> Updater:
    config = replace(config, kind=base_model_kind(method))
    return make_updater(method, BaseLearner(config, train, seed), seed, META)


def run(updater: Updater, data: list[Examples]) -> list[Params]:
    return [updater.update(p) for p in data]


def assert_same(a: Params, b: Params) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


@pytest.mark.parametrize("method", [*REPLAY_METHODS, "asmg-gru-multi+ens", "iu+prev", "asmg-gru-multi+prev"])
def test_produces_models_of_the_base_shapes(
    method: str, small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    updater = fresh(method, small_config, small_train)
    shapes = {n: p.shape for n, p in updater.learner.model.named_parameters()}
    for served in run(updater, periods(small_log)[:5]):
        assert {n: t.shape for n, t in served.items()} == shapes
        assert all(torch.isfinite(t).all() for t in served.values())


@pytest.mark.parametrize("method", [*REPLAY_METHODS, "asmg-gru-multi+ens", "iu+prev", "asmg-gru-multi+prev"])
def test_deterministic_under_a_seed(
    method: str, small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log)[:4]
    first = run(fresh(method, small_config, small_train), data)
    second = run(fresh(method, small_config, small_train), data)
    for a, b in zip(first, second, strict=True):
        assert_same(a, b)
    other = run(fresh(method, small_config, small_train, seed=8), data)
    assert not torch.equal(first[-1]["item_emb"], other[-1]["item_emb"])


@pytest.mark.parametrize("method", [*REPLAY_METHODS, "asmg-gru-multi+ens", "iu+prev", "asmg-gru-multi+prev"])
def test_save_and_load_resumes_exactly(
    method: str, small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    data = periods(small_log)
    original = fresh(method, small_config, small_train)
    run(original, data[:4])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    restored = fresh(method, small_config, small_train, seed=99)  # the state, not the seed, must decide
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert_same(original.update(data[4]), restored.update(data[4]))
    assert_same(original.update(data[5]), restored.update(data[5]))
