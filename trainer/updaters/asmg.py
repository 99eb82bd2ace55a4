"""ASMG (ASMG.md §2–4): IU base models plus a meta generator over their sequence.

At the close of period t, with IU versions Θ_{t-k}..Θ_{t-1} kept:

1. the generator is trained so that its output after consuming Θ_j scores
   well on D_{j+1} (``multi``: every step, linearly weighted; ``single``:
   the last step only), starting from the hidden state carried from the
   previous period;
2. the carried state advances past Θ_{t-k}, since the window slides by one;
3. IU trains Θ_t on D_t;
4. the generator reads Θ_{t-k+1}..Θ_t and its output serves period t+1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.features import Examples
from trainer.learner import BaseLearner, seeded_generator
from trainer.meta import CoordinateGRU, LinearCombiner, Readout, as_rows
from trainer.model import EMBEDDING_TABLES, Params, logits
from trainer.updaters.base import Updater

Strategy = Literal["single", "multi", "full", "zero", "unif"]
STRATEGIES: tuple[Strategy, ...] = ("single", "multi", "full", "zero", "unif")


@dataclass(frozen=True)
class MetaConfig:
    generator: Literal["gru", "linear"] = "gru"
    strategy: Strategy = "multi"
    window: int = 3
    hidden: int = 4
    lr: float = 1e-2
    batch_size: int = 1024
    epochs: int = 1
    readout: Readout = "plain"
    gate_bias: bool = False
    # divide each tensor's inputs by its RMS in the newest version (and scale
    # the read-out back), so the GRU sees values of order one: a choice, measured
    input_scale: bool = False
    warmup: int = 1  # periods of meta training before generated models are served

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.window < 1 or self.hidden < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("window, hidden, batch_size and epochs must be positive")
        if self.warmup < 0:
            raise ValueError("warmup must not be negative")


def step_weights(strategy: Strategy, steps: int) -> list[float]:
    """λ_j for the output after each window step (ASMG.md §4)."""
    if strategy == "single":
        return [0.0] * (steps - 1) + [1.0]
    if strategy == "unif":
        return [1.0 / steps] * steps
    total = steps * (steps + 1) / 2
    return [j / total for j in range(1, steps + 1)]


def compact_batches(batches: list[Examples]) -> tuple[dict[str, Tensor], list[Examples]]:
    """Rows each embedding table needs for ``batches``, and the batches with
    their indices rewritten to point into those compact row sets."""
    states = [b.to_dict() for b in batches]
    rows: dict[str, Tensor] = {}
    for table, fields in EMBEDDING_TABLES.items():
        parts = [s[f] for s in states for f in fields]
        unique, inverse = torch.unique(torch.cat([p.reshape(-1) for p in parts]).clamp(min=0), return_inverse=True)
        rows[table] = unique
        offset = 0
        for s in states:
            for f in fields:
                n = s[f].numel()
                s[f] = torch.where(s[f] >= 0, inverse[offset : offset + n].reshape(s[f].shape), -1)
                offset += n
    return rows, [Examples.from_dict(s) for s in states]


class Asmg(Updater):
    def __init__(self, learner: BaseLearner, meta: MetaConfig, seed: int) -> None:
        super().__init__(learner)
        self.meta = meta
        self.shapes = {n: tuple(p.shape) for n, p in learner.model.named_parameters()}
        self.generator: CoordinateGRU | LinearCombiner
        with torch.random.fork_rng():
            torch.manual_seed(seed + 2)
            if meta.generator == "gru":
                self.generator = CoordinateGRU(self.shapes, meta.hidden, meta.readout, meta.gate_bias)
            else:
                self.generator = LinearCombiner(self.shapes, meta.window)
        self.meta_optimizer = torch.optim.Adam(self.generator.parameters(), lr=meta.lr, fused=True)
        self.rng = seeded_generator(seed + 3)
        self.models: list[Params] = []  # IU versions, oldest first
        self.periods: list[Examples] = []  # periods[i] is the data models[i] was trained on
        self.hidden: dict[str, Tensor] | None = None  # initial state of the next window
        self.meta_periods = 0

    @property
    def carries_state(self) -> bool:
        return self.meta.generator == "gru" and self.meta.strategy in ("single", "multi", "unif")

    def _window(self) -> list[Params]:
        return self.models if self.meta.strategy == "full" else self.models[-self.meta.window :]

    def update(self, period: Examples) -> Params:
        if len(self.models) >= self.meta.window:
            window = self._window()
            h0 = self.hidden if self.carries_state else None
            started = time.perf_counter()
            self._train_meta(window, [*self.periods[len(self.periods) - len(window) + 1 :], period], h0)
            self.last_meta_seconds = time.perf_counter() - started
            if self.carries_state:
                self.hidden = self._advance(window[0], window[-1], h0)
            self.meta_periods += 1
        self.learner.fit(period)
        self.models.append(self.learner.params())
        self.periods.append(period)
        if self.meta.strategy != "full":
            del self.models[: -self.meta.window]
            del self.periods[: -self.meta.window]
        return self.generate() if self.generating else self.learner.params()

    @property
    def generating(self) -> bool:
        """Whether ``update`` now returns a generated model (False in warm-up: IU)."""
        return self.meta_periods >= self.meta.warmup and self.meta_periods > 0

    # -- the generator over parameter sequences ---------------------------------

    def _run(
        self, name: str, inputs: list[Tensor], h0: Tensor | None, scale: float
    ) -> tuple[list[Tensor | None], Tensor | None]:
        if isinstance(self.generator, LinearCombiner):
            return [None] * (len(inputs) - 1) + [self.generator.combine(name, inputs)], None
        h = h0 if h0 is not None else self.generator.zero_state(name, inputs[0].shape[0])
        outputs, first = self.generator.run(name, inputs, h, scale)
        return list(outputs), first

    def _scales(self, newest: Params) -> dict[str, float]:
        if not self.meta.input_scale:
            return dict.fromkeys(newest, 1.0)
        return {name: max(float(value.pow(2).mean().sqrt()), 1e-8) for name, value in newest.items()}

    def _train_meta(self, window: list[Params], targets: list[Examples], h0: dict[str, Tensor] | None) -> None:
        weights = step_weights(self.meta.strategy, len(window))
        if self.meta.generator == "linear":
            weights = [0.0] * (len(window) - 1) + [1.0]
        # the newest period sets the batch count; older ones are cut to match
        n_batches = max(1, math.ceil(len(targets[-1]) / self.meta.batch_size))
        self.generator.train()
        for _ in range(self.meta.epochs):
            splits = [
                torch.randperm(len(t), generator=self.rng).tensor_split(n_batches) if w > 0 else None
                for t, w in zip(targets, weights, strict=True)
            ]
            for b in range(n_batches):
                chosen = [j for j, s in enumerate(splits) if s is not None and len(s[b])]
                batches = [targets[j].select(splits[j][b]) for j in chosen]  # type: ignore[index]
                rows, compact = compact_batches(batches)
                generated = self._generate_rows(window, rows, h0)
                loss = sum(
                    (
                        weights[j]
                        * F.binary_cross_entropy_with_logits(
                            logits(generated[j], ex, self.learner.model.n_layers), ex.label
                        )
                        for j, ex in zip(chosen, compact, strict=True)
                    ),
                    torch.zeros(()),
                )
                self.meta_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.meta_optimizer.step()

    def _generate_rows(
        self, window: list[Params], rows: dict[str, Tensor] | None, h0: dict[str, Tensor] | None
    ) -> list[Params]:
        """Every window step's generated parameters; embedding tables hold only
        ``rows[table]`` (all rows when ``rows`` is None)."""
        generated: list[Params] = [{} for _ in window]
        scales = self._scales(window[-1])
        for name, shape in self.shapes.items():
            if name in EMBEDDING_TABLES and rows is not None:
                inputs = [m[name][rows[name]] for m in window]
                h = h0[name][rows[name]] if h0 is not None else None
            else:
                inputs = [as_rows(name, m[name]) for m in window]
                h = h0[name] if h0 is not None else None
            outputs, _ = self._run(name, inputs, h, scales[name])
            for j, out in enumerate(outputs):
                if out is not None:
                    generated[j][name] = out if name in EMBEDDING_TABLES else out.reshape(shape)
        return generated

    @torch.no_grad()
    def _advance(self, first: Params, newest: Params, h0: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """The hidden state after the window's first version, for every row."""
        assert isinstance(self.generator, CoordinateGRU)
        state = {}
        scales = self._scales(newest)
        for name in self.shapes:
            x = as_rows(name, first[name])
            h = h0[name] if h0 is not None else self.generator.zero_state(name, x.shape[0])
            state[name] = self.generator.step(name, x / scales[name], h)
        return state

    @torch.no_grad()
    def generate(self) -> Params:
        """The serving model generated from the current window."""
        self.generator.eval()
        h0 = self.hidden if self.carries_state else None
        return self._generate_rows(self._window(), None, h0)[-1]

    # -- persistence --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "generator": self.generator.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "models": self.models,
            "periods": [p.to_dict() for p in self.periods],
            "hidden": self.hidden,
            "meta_periods": self.meta_periods,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.rng.set_state(state["rng"])
        self.models = list(state["models"])
        self.periods = [Examples.from_dict(p) for p in state["periods"]]
        self.hidden = state["hidden"]
        self.meta_periods = int(state["meta_periods"])
