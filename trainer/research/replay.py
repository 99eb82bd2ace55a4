"""The paper's evaluation protocol (docs/method.md §6) on a time-sorted log.

31 equal-count periods; Θ_0 pre-trained on periods 1–10; every method then
updates on periods 11–30 and the model it would serve next is scored on the
following period before anything trains on it. The 20 scored periods split
10/3/7 into warm-up, validation and test.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from trainer.core.config import BaselineConfig, ModelConfig, ModelKind, TrainConfig
from trainer.core.features import Examples
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters import Updater, base_model_kind, make_updater
from trainer.learning.updaters.asmg import Asmg
from trainer.research.encoding import EncodedLog
from trainer.research.events import DataError
from trainer.research.periods import equal_count_bounds

Split = Literal["train", "valid", "test"]
MIN_ROWS_PER_PERIOD = 10


@dataclass(frozen=True)
class Protocol:
    pretrain_periods: int = 10
    pretrain_epochs: int = 10
    train_periods: int = 10
    valid_periods: int = 3
    test_periods: int = 7

    @property
    def periods(self) -> int:
        # the last update is scored on one more period
        return self.pretrain_periods + self.train_periods + self.valid_periods + self.test_periods + 1

    def split(self, scored_period: int) -> Split:
        """Which split a 1-based scored period belongs to."""
        index = scored_period - self.pretrain_periods - 2  # 0 for the first scored period
        if index < self.train_periods:
            return "train"
        if index < self.train_periods + self.valid_periods:
            return "valid"
        return "test"


@dataclass(frozen=True)
class PeriodResult:
    method: str
    seed: int
    period: int  # 1-based period the served model was scored on
    split: Split
    auc: float
    logloss: float
    rows: int
    update_seconds: float
    meta_seconds: float


def period_bounds(n_rows: int, periods: int) -> list[tuple[int, int]]:
    """Equal-count contiguous slices, refusing periods too small to score."""
    if n_rows < periods * MIN_ROWS_PER_PERIOD:
        raise DataError(
            f"{n_rows} rows are too few for {periods} periods "
            f"(need at least {periods * MIN_ROWS_PER_PERIOD}, {MIN_ROWS_PER_PERIOD} per period)"
        )
    return equal_count_bounds(n_rows, periods)


def theta0_dir(root: Path, dataset: str, base: Mapping[str, object]) -> Path:
    """Where the tuning benchmarks keep Θ_0 under ``root``: one folder per data set and
    base-model settings, so that no run loads a Θ_0 fitted to other data."""
    name = "-".join(f"{key}{value}" for key, value in sorted(base.items())) or "default"
    return root / dataset / name


def updating_with(learner: BaseLearner, train_config: TrainConfig) -> BaseLearner:
    """``learner``, pre-trained, switched to update with ``train_config``; its Adam
    moments carry over."""
    learner.train_config = train_config
    for group in learner.optimizer.param_groups:
        group["lr"] = train_config.lr
    return learner


class Replay:
    """One data set cut into periods, with the pre-trained model per seed cached.

    ``pretrained_dir`` also keeps each Θ_0 on disk, so processes sharing a
    table pre-train each one once between them (the first takes a file lock
    and trains, the others wait and load it); the directory belongs to one
    set of settings, as a table's does.
    """

    def __init__(
        self,
        log: EncodedLog,
        model_config: ModelConfig,
        train_config: TrainConfig,
        protocol: Protocol | None = None,
        pretrain_config: TrainConfig | None = None,
        pretrained_dir: Path | None = None,
    ) -> None:
        self.protocol = protocol or Protocol()
        self.pretrained_dir = pretrained_dir
        self.model_config = model_config
        self.train_config = train_config
        self.pretrain_config = pretrain_config or train_config
        self.bounds = period_bounds(len(log), self.protocol.periods)
        self.log = log
        first = self.protocol.pretrain_periods
        self.periods = {t: log.examples(*self.bounds[t - 1]) for t in range(first + 1, self.protocol.periods + 1)}
        self._pretrained: dict[tuple[int, str], BaseLearner] = {}

    def pretrain_examples(self) -> Examples:
        """The rows Θ_0 is trained on (periods 1 to ``pretrain_periods``)."""
        return self.log.examples(0, self.bounds[self.protocol.pretrain_periods - 1][1])

    def pretrained(
        self, seed: int, train_config: TrainConfig | None = None, kind: ModelKind | None = None
    ) -> BaseLearner:
        """A copy of Θ_0 for ``seed``, set up to update with ``train_config``
        (default: the replay's), its Adam moments carried over. ``kind`` picks
        another base model ("mf" for SML-MF)."""
        config = replace(self.model_config, kind=kind) if kind else self.model_config
        key = (seed, config.kind)
        if key not in self._pretrained:
            self._pretrained[key] = self._pretrain(config, seed)
        return updating_with(self._pretrained[key].clone(), train_config or self.train_config)

    def warm_generator(self, asmg: Asmg, seed: int, periods: int) -> None:
        """Train ``asmg``'s generator first over the last ``periods`` pre-training
        periods: a model pre-trained (as Θ_0 is) on the periods before them, updated
        by IU period by period over them, makes a sequence of versions whose every
        meta target is a period none of them has seen. ``asmg`` keeps the trained
        generator and its optimiser state, and starts its own sequence from Θ_0 as
        before (zero hidden state): Θ_0, and IU, are unchanged."""
        if periods < 1:
            return
        first = self.protocol.pretrain_periods - periods + 1  # the first period the sequence updates on
        if first < 2:
            raise ValueError(
                f"a warm start over {periods} periods leaves none of the {self.protocol.pretrain_periods} "
                "pre-training periods to pre-train on"
            )
        learner = BaseLearner(asmg.learner.config, self.pretrain_config, seed)
        learner.fit(self.log.examples(0, self.bounds[first - 2][1]), epochs=self.protocol.pretrain_epochs)
        warm = Asmg(updating_with(learner, asmg.learner.train_config), asmg.meta, seed)
        for t in range(first, self.protocol.pretrain_periods + 1):
            warm.update(self.log.examples(*self.bounds[t - 1]))
        asmg.generator.load_state_dict(warm.generator.state_dict())
        asmg.meta_optimizer.load_state_dict(warm.meta_optimizer.state_dict())

    def _pretrain(self, config: ModelConfig, seed: int) -> BaseLearner:
        learner = BaseLearner(config, self.pretrain_config, seed)
        if self.pretrained_dir is None:
            learner.fit(self.pretrain_examples(), epochs=self.protocol.pretrain_epochs)
            return learner
        self.pretrained_dir.mkdir(parents=True, exist_ok=True)
        path = self.pretrained_dir / f"seed{seed}-{config.kind}.pt"
        with path.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                learner.load_state_dict(torch.load(path, weights_only=True))
                return learner
            learner.fit(self.pretrain_examples(), epochs=self.protocol.pretrain_epochs)
            partial = path.with_suffix(".partial")
            torch.save(learner.state_dict(), partial)
            os.replace(partial, path)
        return learner

    def run(
        self,
        method: str,
        seed: int,
        meta_overrides: dict[str, Any] | None = None,
        on_period: Callable[[PeriodResult], None] | None = None,
        train_config: TrainConfig | None = None,
        baselines: BaselineConfig | None = None,
    ) -> list[PeriodResult]:
        pretrain = self.pretrain_examples() if method == "spmf" else None
        learner = self.pretrained(seed, train_config, base_model_kind(method))
        updater = make_updater(method, learner, seed, meta_overrides, baselines, pretrain)
        return list(self.iterate(method, seed, updater, on_period))

    def iterate(
        self,
        method: str,
        seed: int,
        updater: Updater,
        on_period: Callable[[PeriodResult], None] | None = None,
    ) -> Iterable[PeriodResult]:
        first = self.protocol.pretrain_periods + 1
        for t in range(first, self.protocol.periods):
            started = time.perf_counter()
            serving = updater.update(self.periods[t])
            elapsed = time.perf_counter() - started
            auc_value, loss_value = updater.score(serving, self.periods[t + 1])
            result = PeriodResult(
                method=method,
                seed=seed,
                period=t + 1,
                split=self.protocol.split(t + 1),
                auc=auc_value,
                logloss=loss_value,
                rows=len(self.periods[t + 1]),
                update_seconds=elapsed,
                meta_seconds=updater.last_meta_seconds,
            )
            if on_period:
                on_period(result)
            yield result
