"""SML (Zhang et al., SIGIR 2020) on the Emb&MLP base model: a CNN transfer module.

Each period the base model is first trained on D_t starting from the model
served during t (Ŵ_t), then the transfer module combines the served model
W_{t-1} and Ŵ_t into the model to serve next, W_t = f(W_{t-1}, Ŵ_t). The
module is trained towards the *next* period: when D_{t+1} arrives it first
learns from f(W_{t-1}, Ŵ_t) scored on D_{t+1}, then the cycle repeats.

Per parameter row (an embedding row, a row of an MLP weight matrix, or a
whole bias vector) the input is the 3 × width image
[W_{t-1}; Ŵ_t; W_{t-1} ⊙ Ŵ_t / ‖W_{t-1}‖], passed through conv(3×1, n1) →
GELU → conv(1×1, n2) → GELU → dense(h) → GELU → dense(width). One module per
parameter, shared by its rows; a batch transforms only the embedding rows it
touches. With the residual read-out (our default, as for ASMG) the output is
added to Ŵ_t and the last layer starts at zero, so SML starts as IU; the
paper's form outputs W_t directly.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.core.config import SmlConfig
from trainer.core.features import Examples
from trainer.core.model import EMBEDDING_TABLES, Params, logits
from trainer.learning.learner import BaseLearner, seeded_generator
from trainer.learning.meta import module_key
from trainer.learning.updaters.asmg import compact_batches
from trainer.learning.updaters.base import Updater


def as_matrix(value: Tensor) -> Tensor:
    """A parameter as ``[rows, width]``: tables and weight matrices keep their rows, a bias is one row."""
    return value if value.dim() == 2 else value.reshape(1, -1)


def stack_inputs(previous: Tensor, new: Tensor) -> Tensor:
    """``[rows, 3, width]``: previous, new, and their product scaled by the previous row's norm."""
    norm = previous.norm(dim=1, keepdim=True).clamp(min=1e-8)
    return torch.stack([previous, new, previous * new / norm], dim=1)


class Transfer(nn.Module):
    def __init__(self, width: int, config: SmlConfig) -> None:
        super().__init__()
        self.residual = config.residual
        self.conv1 = nn.Conv2d(1, config.filters1, kernel_size=(3, 1))
        self.conv2 = nn.Conv2d(config.filters1, config.filters2, kernel_size=(1, 1))
        self.dense1 = nn.Linear(config.filters2 * width, config.hidden)
        self.dense2 = nn.Linear(config.hidden, width)
        if self.residual:
            nn.init.zeros_(self.dense2.weight)
            nn.init.zeros_(self.dense2.bias)

    def forward(self, previous: Tensor, new: Tensor) -> Tensor:
        x = stack_inputs(previous, new).unsqueeze(1)  # [rows, 1, 3, width]
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))  # [rows, n2, 1, width]
        out: Tensor = self.dense2(F.gelu(self.dense1(h.flatten(1))))
        return new + out if self.residual else out


class Sml(Updater):
    def __init__(self, learner: BaseLearner, config: SmlConfig, seed: int) -> None:
        super().__init__(learner)
        self.config = config
        self.shapes = {n: tuple(p.shape) for n, p in learner.model.named_parameters()}
        with torch.random.fork_rng():
            torch.manual_seed(seed + 5)
            self.transfer = nn.ModuleDict(
                {
                    module_key(n): Transfer(shape[1] if len(shape) == 2 else math.prod(shape), config)
                    for n, shape in self.shapes.items()
                }
            )
        self.optimizer = torch.optim.Adam(self.transfer.parameters(), lr=config.lr)
        self.rng = seeded_generator(seed + 6)
        self.pair: tuple[Params, Params] | None = None  # (W_{t-1}, Ŵ_t) of the last update
        self.served: Params | None = None  # W_t = f(W_{t-1}, Ŵ_t)

    def _module(self, name: str) -> Transfer:
        module = self.transfer[module_key(name)]
        assert isinstance(module, Transfer)
        return module

    def combine(self, previous: Params, new: Params, rows: dict[str, Tensor] | None = None) -> Params:
        """f(previous, new) for every parameter; embedding tables only at ``rows`` when given."""
        out = {}
        for name, shape in self.shapes.items():
            if rows is not None and name in EMBEDDING_TABLES:
                out[name] = self._module(name)(previous[name][rows[name]], new[name][rows[name]])
            else:
                combined = self._module(name)(as_matrix(previous[name]), as_matrix(new[name]))
                out[name] = combined.reshape(shape)
        return out

    def _train_transfer(self, period: Examples) -> None:
        """Learn f from the last pair, scored on the period that followed it."""
        assert self.pair is not None
        previous, new = self.pair
        n_batches = max(1, math.ceil(len(period) / self.config.batch_size))
        self.transfer.train()
        for _ in range(self.config.epochs):
            for idx in torch.randperm(len(period), generator=self.rng).tensor_split(n_batches):
                rows, (batch,) = compact_batches([period.select(idx)])
                params = self.combine(previous, new, rows)
                loss = F.binary_cross_entropy_with_logits(
                    logits(params, batch, self.learner.model.n_layers), batch.label
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()

    def update(self, period: Examples) -> Params:
        started = time.perf_counter()
        if self.pair is not None and self.served is not None:
            self._train_transfer(period)
            # Ŵ_t starts from the model served during t, not from the last Ŵ
            self.learner.model.load_params(self.served)
        self.last_meta_seconds = time.perf_counter() - started
        previous = self.learner.params()
        self.learner.fit(period)
        new = self.learner.params()
        self.pair = (previous, new)
        self.transfer.eval()
        with torch.no_grad():
            self.served = self.combine(previous, new)
        return {name: value.clone() for name, value in self.served.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "transfer": self.transfer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "pair": list(self.pair) if self.pair is not None else None,
            "served": self.served,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.transfer.load_state_dict(state["transfer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.pair = (state["pair"][0], state["pair"][1]) if state["pair"] is not None else None
        self.served = state["served"]
