"""Data-parallel base fits (trainer.learning.distributed): real processes, real gloo on loopback.

The property that makes data parallelism honest: two processes, each taking
its share of every batch, give the single-process fit with the same batch
size and example order (same gradients, same weights, up to float
rounding), and every rank ends with the same weights.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.service import small_settings, traffic
from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.features import Examples
from trainer.core.registry import ensure_initial_model
from trainer.core.store import LocalStore
from trainer.core.store.base import Interaction
from trainer.learning import distributed
from trainer.learning.learner import BaseLearner
from trainer.loop.worker import PeriodTrainer
from trainer.research.cli import main
from trainer.research.encoding import EncodedLog

# One group of 2 processes shared by the tests that fit on it (starting one
# takes a second or two); a test that breaks it, or needs none, ends it.
_shared: list[distributed.FitGroup] = []


def _end_shared() -> None:
    while _shared:
        _shared.pop().close()


@pytest.fixture(scope="module", autouse=True)
def _close_at_end() -> Iterator[None]:
    yield
    _end_shared()


@pytest.fixture
def group() -> Iterator[distributed.FitGroup]:
    """The shared 2-process group, installed for the test (so ``BaseLearner.fit`` runs on it)."""
    if _shared and (_shared[0].broken or _shared[0].closed):
        _end_shared()
    if not _shared:
        _shared.append(distributed.spawn(2))
    distributed.install(_shared[0])
    try:
        yield _shared[0]
    finally:
        distributed.install(None)


def single_fit(learner: BaseLearner, ex: Examples, **kwargs: object) -> float:
    """A fit in this process alone, whatever is installed."""
    installed = distributed.active()
    distributed.install(None)
    try:
        return learner.fit(ex, **kwargs)  # type: ignore[arg-type]
    finally:
        distributed.install(installed)


def grads(learner: BaseLearner) -> dict[str, torch.Tensor]:
    """The gradient of the fit's last batch, which a fit leaves in place."""
    out = {}
    for name, p in learner.model.named_parameters():
        assert p.grad is not None, name
        out[name] = p.grad.clone()
    return out


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=rtol, atol=atol), (name, float((a[name] - b[name]).abs().max()))


def test_two_processes_fit_as_one_with_the_same_batches(
    group: distributed.FitGroup, small_log: EncodedLog, small_config: ModelConfig
) -> None:
    # 653 rows in batches of 100: the last, of 53, splits 27/26, so the shares weigh unequally
    ex = small_log.examples(0, 653)
    train = TrainConfig(lr=1e-2, batch_size=100, epochs=2)
    one = BaseLearner(small_config, train, seed=5)
    two = one.clone()
    loss_one = single_fit(one, ex)
    loss_two = two.fit(ex)
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    # the last batch's gradient is the whole batch's, not a mean of the shares' means
    assert_close(grads(two), grads(one), rtol=1e-4, atol=1e-7)
    assert_close(two.params(), one.params(), rtol=1e-5, atol=1e-6)
    start = BaseLearner(small_config, train, seed=5).params()
    moved = max(float((two.params()[name] - value).abs().max()) for name, value in start.items())
    assert moved > 1e-3  # the fit did train
    # Adam's moments and the shuffling generator carry on alike
    torch.testing.assert_close(two.optimizer.state_dict()["state"], one.optimizer.state_dict()["state"])
    assert torch.equal(two.rng.get_state(), one.rng.get_state())
    # every rank holds the same weights, bit for bit
    helper = group.rank_params()[1]
    assert all(torch.equal(helper[name], value) for name, value in two.params().items())


def test_a_batch_smaller_than_the_group_and_distillation_targets(
    group: distributed.FitGroup, small_log: EncodedLog, small_config: ModelConfig
) -> None:
    # 301 rows in batches of 100: the last batch is one row, and rank 1's share of it is empty
    ex = small_log.examples(100, 401)
    soft = torch.rand(len(ex), generator=torch.Generator().manual_seed(1))
    train = TrainConfig(lr=1e-2, batch_size=100)
    one = BaseLearner(small_config, train, seed=2)
    two = one.clone()
    loss_one = single_fit(one, ex, soft_targets=soft, soft_weight=0.3)
    loss_two = two.fit(ex, soft_targets=soft, soft_weight=0.3)
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    assert_close(grads(two), grads(one), rtol=1e-4, atol=1e-7)
    assert_close(two.params(), one.params(), rtol=1e-5, atol=1e-6)
    helper = group.rank_params()[1]
    assert all(torch.equal(helper[name], value) for name, value in two.params().items())


def test_the_same_start_gives_the_same_weights_run_to_run(
    group: distributed.FitGroup, small_log: EncodedLog, small_config: ModelConfig
) -> None:
    ex = small_log.examples(0, 500)
    start = BaseLearner(small_config, TrainConfig(lr=1e-2, batch_size=64, epochs=2), seed=3)
    runs = [start.clone() for _ in range(2)]
    for learner in runs:
        learner.fit(ex)
    assert all(torch.equal(runs[0].params()[n], runs[1].params()[n]) for n in runs[0].params())


def test_a_helper_that_dies_fails_the_fit_instead_of_hanging(
    group: distributed.FitGroup, small_log: EncodedLog, small_config: ModelConfig
) -> None:
    learner = BaseLearner(small_config, TrainConfig(batch_size=64), seed=0)
    learner.fit(small_log.examples(0, 200))
    helper = group.processes[0]
    assert helper.pid is not None
    os.kill(helper.pid, signal.SIGKILL)
    helper.join(timeout=10)
    with pytest.raises(RuntimeError):
        learner.fit(small_log.examples(200, 400))
    assert group.broken
    group.close()  # must not hang on the dead helper


def periods(out: Path) -> dict[tuple[str, int], float]:
    with (out / "periods.csv").open() as f:
        return {(row["method"], int(row["period"])): float(row["auc"]) for row in csv.DictReader(f)}


def test_replay_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    from tests.test_cli import write_ratings

    _end_shared()
    data = write_ratings(tmp_path, 31 * 40)
    small = ["--data", str(data), "--methods", "iu,asmg-gru-multi", "--buckets", "256", "--pretrain-epochs", "2"]
    small += ["--batch-size", "64", "--meta-batch", "64", "--jobs", "1"]
    assert main(["replay", *small, "--out", str(tmp_path / "one")]) == 0
    assert main(["replay", *small, "--base-procs", "2", "--out", str(tmp_path / "two")]) == 0
    assert json.loads((tmp_path / "two" / "config.json").read_text())["base_procs"] == 2
    one, two = periods(tmp_path / "one"), periods(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 40
    # the same fits up to float rounding: the served models score alike, period after period
    assert max(abs(one[k] - two[k]) for k in one) < 1e-3


def test_the_trainer_fits_on_its_helpers_when_asked(tmp_path: Path) -> None:
    _end_shared()
    published = []
    for procs in (1, 2):
        settings = small_settings(tmp_path / f"state{procs}", base_procs=procs, method="iu")
        store = LocalStore(settings.state_dir)
        trainer = PeriodTrainer(store, settings)
        try:
            ensure_initial_model(store, settings)
            for events in traffic(3, seed=2):
                interactions = [
                    Interaction(e["user_id"], e["item_id"], tuple(e["categories"]), e["label"], 1.0) for e in events
                ]
                store.append(interactions, settings.history_length)
                store.rollover()
            trainer.train_pending()
            assert (trainer.fit_group is not None) == (procs > 1)
            published.append([v.metrics for v in store.versions()[1:]])
        finally:
            trainer.close()
            store.close()
    assert distributed.active() is None
    assert len(published[0]) == len(published[1]) == 3
    for single, parallel in zip(*published, strict=True):
        assert parallel["pv_auc"] == pytest.approx(single["pv_auc"], abs=1e-4)
