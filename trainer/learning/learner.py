"""A base model plus the optimiser state it carries from period to period."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.features import Examples
from trainer.core.model import Params, seeded_model
from trainer.learning import distributed


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def minibatches(n: int, batch_size: int, rng: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=rng).split(batch_size)) if n else []


class BaseLearner:
    """Emb&MLP trained by Adam, whose moments survive across periods (docs/method.md §5)."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, seed: int) -> None:
        self.train_config = train_config
        self.model = seeded_model(model_config, seed)
        # the fused CPU kernel is ~10x faster than the default on these table sizes
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_config.lr, fused=True)
        self.rng = seeded_generator(seed + 1)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def fit(
        self,
        ex: Examples,
        epochs: int | None = None,
        soft_targets: torch.Tensor | None = None,
        soft_weight: float = 0.0,
    ) -> float:
        """Train on ``ex`` (shuffled, ``epochs`` passes); returns the mean batch loss.

        With ``soft_targets`` (one probability per row) the loss is
        ``(1 − w)·CE(label) + w·CE(soft target)``, ``w = soft_weight``: IncCTR's
        distillation towards the previous model.

        While a data-parallel group is installed (:mod:`trainer.learning.distributed`)
        the fit runs on its processes: the same steps, each batch's gradient summed
        from their shares.
        """
        group = distributed.active()
        if group is not None and len(ex):
            return group.fit(self, ex, epochs or self.train_config.epochs, soft_targets, soft_weight)
        self.model.train()
        losses = []
        for _ in range(epochs or self.train_config.epochs):
            for idx in minibatches(len(ex), self.train_config.batch_size, self.rng):
                batch = ex.select(idx)
                out = self.model(batch)
                loss = F.binary_cross_entropy_with_logits(out, batch.label)
                if soft_targets is not None:
                    soft = F.binary_cross_entropy_with_logits(out, soft_targets[idx])
                    loss = (1 - soft_weight) * loss + soft_weight * soft
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
        return sum(losses) / len(losses) if losses else float("nan")

    def params(self) -> Params:
        return self.model.params()

    def clone(self) -> BaseLearner:
        return copy.deepcopy(self)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
