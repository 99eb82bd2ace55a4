"""ASMG (docs/method.md §2–4): IU base models plus a meta generator over their sequence.

At the close of period t, with IU versions Θ_{t-k}..Θ_{t-1} kept:

1. the generator is trained so that its output after consuming Θ_j scores
   well on D_{j+1} (``multi``: every step, linearly weighted; ``single``:
   the last step only), starting from the hidden state carried from the
   previous period;
2. the carried state advances past Θ_{t-k}, since the window slides by one;
3. IU trains Θ_t on D_t;
4. the generator reads Θ_{t-k+1}..Θ_t and its output serves period t+1.

The GRU runs per embedding row only over the rows IU has changed at least
once (*live* rows). The others, hashed buckets no id has reached yet, hold
their initial values in every version; they share one *cold* sequence, the
zero sequence, whose generated value each adds to its own initial value
(residual read-out) or takes as it is (plain). As initial values are small
(~1e-2), that is within O(initial value) of running each row's GRU, and it
keeps the generator learning what to serve for ids it has not seen: a row
turning live starts from the cold state. With hashed tables most rows are
never reached, so this keeps the cost proportional to the ids seen, not to
the table sizes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.core.features import Examples, concat_examples
from trainer.core.model import EMBEDDING_TABLES, CategoryMix, Params, category_mix, parts_logits, score
from trainer.learning.learner import BaseLearner, seeded_generator
from trainer.learning.meta import CoordinateGRU, LinearCombiner, Readout, join_saved_optimizer_state
from trainer.learning.updaters.base import Updater

COLD = "/cold"  # hidden-state key suffix: a table's cold sequence
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
    # meta-replay: each period the generator also trains on the ``replay`` windows before
    # the newest (window ending t−1−j → D_{t−j}), each on a ``replay_share`` of its
    # targets' examples: more distinct meta targets per period than the newest one
    replay: int = 0
    replay_share: float = 1.0
    # the stopping rule: this share of each window's newest target is held back from meta
    # training and scored after every epoch (of at most ``epochs``); an epoch that does not
    # lower its loss is undone and ends the period's meta training. 0: every epoch runs
    holdout: float = 0.0
    # the served model is (1 − blend)·θ_IU + blend·θ_generated, θ_IU the window's newest
    # version: 1 serves the generated model, 0.5 half the generator's step from IU's
    blend: float = 1.0
    # run the GRU's windows in C where a compiler can build them (trainer/learning/native): same steps, faster
    native_kernels: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.window < 1 or self.hidden < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("window, hidden, batch_size and epochs must be positive")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        if self.warmup < 0:
            raise ValueError("warmup must not be negative")
        if self.replay < 0 or not 0 < self.replay_share <= 1:
            raise ValueError("replay must not be negative and replay_share must be in (0, 1]")
        if not 0 <= self.holdout < 1:
            raise ValueError("holdout must be in [0, 1)")
        if not 0 < self.blend <= 2:
            raise ValueError("blend must be in (0, 2]")


def step_weights(strategy: Strategy, steps: int) -> list[float]:
    """λ_j for the output after each window step (docs/method.md §4)."""
    if strategy == "single":
        return [0.0] * (steps - 1) + [1.0]
    if strategy == "unif":
        return [1.0 / steps] * steps
    total = steps * (steps + 1) / 2
    return [j / total for j in range(1, steps + 1)]


# A table with at most this many coordinates (rows × columns) in a step joins
# the MLP's GRU call as a row of coordinates rather than making a call of its
# own: a call costs ~1 ms of fixed overhead, and ~20 category rows very little.
ONE_ROW_MAX = 512


class _TableRows(NamedTuple):
    """Rows of a table as the GRU is fed them (see ``Asmg._window_tables``)."""

    versions: Tensor  # [T, R, c]: the window's values of the rows
    live: Tensor  # [R]: which rows are live
    inputs: Tensor  # [T, R, c]: the values, zero at rows not live
    h: Tensor | None  # [R, c, d]: their states, the cold state at rows not live

    def select(self, rows: Tensor) -> _TableRows:
        versions = self.versions.index_select(1, rows)
        return _TableRows(
            versions,
            self.live.index_select(0, rows),
            versions if self.inputs is self.versions else self.inputs.index_select(1, rows),
            None if self.h is None else self.h.index_select(0, rows),
        )


class _Row(NamedTuple):
    """The MLP's tensors and some small tables side by side as one row of
    coordinates, as the GRU is fed them (see ``Asmg._row``)."""

    names: list[str]
    widths: list[int]  # each tensor's coordinates
    tables: dict[str, _TableRows]  # the tables in it, whole
    inputs: Tensor  # [T, 1, C]
    h: Tensor | None  # [1, C, d]
    scale: float | Tensor


def _rows_changed(new: Tensor, old: Tensor) -> Tensor:
    """Which rows of a table differ, bit for bit, between two versions. Pairs of
    columns are compared as one int64 and a row's flags read as one word where
    the row allows: any() over short rows is a slow reduction (65,536 × 8:
    0.45 → 0.25 ms)."""
    if new.shape[1] % 2 or new.shape[1] > 16 or new.element_size() != 4:
        return (new != old).any(dim=1)
    differ = new.view(torch.int64) != old.view(torch.int64)  # [R, c/2] flags, one byte each
    word = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(differ.shape[1])
    return differ.view(word).ne(0).squeeze(1) if word is not None else differ.any(dim=1)


def _by_width(widths: dict[str, int]) -> list[list[str]]:
    """Tables by their column count: those of as many columns run as one."""
    groups: dict[int, list[str]] = {}
    for name, width in widths.items():
        groups.setdefault(width, []).append(name)
    return list(groups.values())


def _and_cold(rows: Tensor, cold: Tensor | None = None) -> Tensor:
    """``rows`` of a table, then the cold sequence's row: its state ``cold``, or zeros
    (its value, and its state where it has none yet)."""
    return torch.cat([rows, rows.new_zeros(1, *rows.shape[1:]) if cold is None else cold])


def compact_batches(
    batches: list[Examples], tables: Iterable[str] = EMBEDDING_TABLES, steps: list[int] | None = None
) -> tuple[dict[str, Tensor], list[Examples]]:
    """Rows each embedding table of ``tables`` needs for ``batches`` (ascending), and
    the batches with their indices rewritten to point into those compact row sets;
    with ``steps``, batch i's into copy ``steps[i]`` of them, the copies laid end
    to end (the generator's outputs of every window step, stacked)."""
    states = [b.to_dict() for b in batches]
    rows: dict[str, Tensor] = {}
    for table in tables:
        fields = EMBEDDING_TABLES[table]
        parts = [s[f].reshape(-1) for s in states for f in fields]
        size = max(int(p.max()) + 1 if p.numel() else 0 for p in parts)
        # a mark per table row instead of torch.unique: no sort, same ascending rows
        used = torch.zeros(size + 1, dtype=torch.bool)  # the last row takes the -1 padding
        for p in parts:
            used.index_fill_(0, p.long(), True)
        used[-1] = False
        rows[table] = used.nonzero().squeeze(1)
        # position[r + 1] is row r's compact index; position[0] = -1 keeps padding.
        # int64 positions: index_add_, the backward of the history lookup, is ~4x slower on int32
        position = torch.full((size + 1,), -1, dtype=torch.long)
        n = len(rows[table])
        for s, step in zip(states, steps or [0] * len(states), strict=True):
            position[rows[table] + 1] = torch.arange(step * n, (step + 1) * n)
            for f in fields:
                s[f] = position.index_select(0, (s[f] + 1).reshape(-1)).view(s[f].shape)
    return rows, [Examples.from_dict(s) for s in states]


class GateScores(NamedTuple):
    """AUC on a period of the two models that could have served it."""

    generated: float
    iu: float


class Asmg(Updater):
    def __init__(self, learner: BaseLearner, meta: MetaConfig, seed: int) -> None:
        super().__init__(learner)
        self.meta = meta
        self.shapes = {n: tuple(p.shape) for n, p in learner.model.named_parameters()}
        self.generator: CoordinateGRU | LinearCombiner
        with torch.random.fork_rng():
            torch.manual_seed(seed + 2)
            if meta.generator == "gru":
                self.generator = CoordinateGRU(
                    self.shapes, meta.hidden, meta.readout, meta.gate_bias, meta.native_kernels
                )
            else:
                self.generator = LinearCombiner(self.shapes, meta.window)
        self.meta_optimizer = torch.optim.Adam(self.generator.parameters(), lr=meta.lr, fused=True)
        self.rng = seeded_generator(seed + 3)
        self.models: list[Params] = []  # IU versions, oldest first
        self.periods: list[Examples] = []  # periods[i] is the data models[i] was trained on
        self.mixes: list[CategoryMix | None] = []  # the periods' category weights, made once each (not saved)
        self.hidden: dict[str, Tensor] | None = None  # initial state of the next window
        self.meta_periods = 0
        # per embedding table, the rows IU has changed in any version so far (all rows for
        # the linear generator, whose cost is a weighted sum and needs no shortcut)
        linear = meta.generator == "linear"
        self.live = {t: torch.full((self.shapes[t][0],), linear) for t in EMBEDDING_TABLES if t in self.shapes}
        self.mlp = [name for name in self.shapes if name not in self.live]  # generated as one row
        self.mlp_widths = [math.prod(self.shapes[name]) for name in self.mlp]

    @property
    def carries_state(self) -> bool:
        return self.meta.generator == "gru" and self.meta.strategy in ("single", "multi", "unif")

    def _window(self, back: int = 0) -> list[Params]:
        """The window of versions ending ``back`` versions before the newest."""
        end = len(self.models) - back
        return self.models[:end] if self.meta.strategy == "full" else self.models[max(0, end - self.meta.window) : end]

    def _replayable(self) -> int:
        """How many earlier windows meta-replay trains on now: those whole windows the kept versions hold."""
        return min(self.meta.replay, len(self.models) - self.meta.window)

    def _replay_window(self, back: int) -> None:
        """One meta-training pass over the window ending ``back`` versions before the
        newest, scored on the periods that followed each of its versions (the last: the
        newest version's own period, ``back`` − 1 before the newest). It starts from the
        zero state: the state carried past that window's start is not kept."""
        window = self._window(back)
        end = len(self.models) - back
        start = end - len(window)
        targets = self.periods[start + 1 : end + 1]
        mixes = self.mixes[start + 1 : end + 1]
        if self.meta.replay_share < 1:
            picks = [
                torch.randperm(len(t), generator=self.rng)[: max(1, round(self.meta.replay_share * len(t)))]
                for t in targets
            ]
            targets = [t.select(pick) for t, pick in zip(targets, picks, strict=True)]
            mixes = [m.select(pick) if m is not None else None for m, pick in zip(mixes, picks, strict=True)]
        self._train_meta(window, targets, mixes, None)

    def update(self, period: Examples) -> Params:
        started = time.perf_counter()
        if len(self.periods) != len(self.mixes):  # loaded from a saved state
            self.mixes = [self._mix(p) for p in self.periods]
        mix = self._mix(period)
        if len(self.models) >= self.meta.window:
            window = self._window()
            h0 = self.hidden if self.carries_state else None
            # earlier windows first, so the newest target's steps come last
            for back in range(self._replayable(), 0, -1):
                self._replay_window(back)
            older = len(self.periods) - len(window) + 1
            self._train_meta(window, [*self.periods[older:], period], [*self.mixes[older:], mix], h0)
            if self.carries_state:
                self.hidden = self._advance(window[0], window[-1], h0)
            self.meta_periods += 1
        # the newest version is the learner's parameters as they are now
        before = self.models[-1] if self.models else self.learner.params()
        iu_started = time.perf_counter()
        self.learner.fit(period)
        self.models.append(self.learner.params())
        iu_seconds = time.perf_counter() - iu_started  # IU's own step: its training and the copy it keeps
        self._track_live(before)
        self.periods.append(period)
        self.mixes.append(mix)
        if self.meta.strategy != "full":
            kept = self.meta.window + self.meta.replay
            del self.models[:-kept]
            del self.periods[:-kept]
            del self.mixes[:-kept]
        served = self.generate() if self.generating else self.learner.params()
        # everything ASMG adds to IU's step: the generator's training, the state
        # carry, tracking live rows and generating the serving model
        self.last_meta_seconds = time.perf_counter() - started - iu_seconds
        return served

    def absorb(self, extra: Examples) -> None:
        """Train IU on ``extra`` as more of the newest period: for events held back from
        :meth:`update` to check its result on, learnt before anything is served (:meth:`generate`
        then reads the window with them). The generator is not trained again; the newest
        period, as a later meta target, has them."""
        before = self.models[-1]
        self.learner.fit(extra)
        self.models[-1] = self.learner.params()
        self._track_live(before)
        self.periods[-1] = concat_examples([self.periods[-1], extra])
        self.mixes[-1] = self._mix(self.periods[-1])

    def _track_live(self, before: Params) -> None:
        """Rows the newest version changed since ``before`` are live from now on."""
        for table, live in self.live.items():
            turned = _rows_changed(self.models[-1][table], before[table]) & ~live
            if self.hidden is not None and table + COLD in self.hidden:
                # only live rows' states are kept; a row turning live starts from the cold state
                self.hidden[table][turned] = self.hidden[table + COLD]
            live |= turned

    def _mix(self, period: Examples) -> CategoryMix | None:
        return category_mix(period, self.shapes["cat_emb"][0]) if "cat_emb" in self.shapes else None

    def gate_scores(self, period: Examples) -> GateScores | None:
        """The quality gate's evidence: the model the generator made for ``period``
        (generated again: same window, state and weights) and IU's model for it,
        scored on it before either trains on it; None while nothing is generated.
        Comparing after the update would be unfair: IU has then fitted this very period."""
        if not self.generating:
            return None
        n_layers = self.learner.model.n_layers
        generated, _ = score(self.generate(), period, n_layers)
        iu, _ = score(self.learner.params(), period, n_layers)
        return GateScores(generated, iu)

    @property
    def generating(self) -> bool:
        """Whether ``update`` now returns a generated model (False in warm-up: IU)."""
        return self.meta_periods >= self.meta.warmup and self.meta_periods > 0

    # -- the generator over parameter sequences ---------------------------------

    def _run(
        self,
        names: list[str],
        inputs: Tensor,
        h0: Tensor | None,
        scale: float | Tensor,
        tiled: dict[str, int] | None = None,
    ) -> Tensor:
        """The generated values after each window step, ``[T, R, c]``, for inputs
        ``[T, R, c]``; the linear combiner has only the last step's, which
        stands for every step (only the last is ever scored)."""
        if isinstance(self.generator, LinearCombiner):
            return self.generator.combine(names, list(inputs)).expand(len(inputs), -1, -1)
        h = h0 if h0 is not None else self.generator.zero_state(inputs[0])
        return self.generator.run(names, inputs, h, scale, tiled)

    def _scales(self, newest: Params) -> dict[str, float]:
        if not self.meta.input_scale:
            return dict.fromkeys(newest, 1.0)
        return {name: max(float(value.pow(2).mean().sqrt()), 1e-8) for name, value in newest.items()}

    def _train_meta(
        self,
        window: list[Params],
        targets: list[Examples],
        mixes: list[CategoryMix | None],
        h0: dict[str, Tensor] | None,
    ) -> None:
        weights = step_weights(self.meta.strategy, len(window))
        if self.meta.generator == "linear":
            weights = [0.0] * (len(window) - 1) + [1.0]
        # the newest period sets the batch count; older ones are cut to match
        n_batches = max(1, math.ceil(len(targets[-1]) / self.meta.batch_size))
        looked_up = list(self.live)
        cat_rows, places = None, []
        if all(m is not None for m in mixes) and "cat_emb" in looked_up:
            # every period's category weights are at hand: the batches need no category
            # lookups, and the generator runs over the categories any of the periods names
            looked_up.remove("cat_emb")
            cat_rows, inverse = torch.cat([m.rows for m in mixes if m is not None]).unique(return_inverse=True)
            places = list(inverse.split([len(m.rows) for m in mixes if m is not None]))
            targets = [replace(t, item_cats=t.item_cats[:, :0], hist_cats=t.hist_cats[..., :0]) for t in targets]
        # the rows the periods name, prepared for the GRU once; batches then index those
        period_rows, targets = compact_batches(targets, looked_up)
        if cat_rows is not None:
            period_rows["cat_emb"] = cat_rows
        tables = self._window_tables(window, h0, period_rows)
        # tables every batch uses whole (the category rows, with category weights): the
        # small ones join the MLP's row, which is then the same for every batch
        scales = self._scales(window[-1])
        row = self._row(window, h0, scales, {n: t for n, t in tables.items() if n not in looked_up})

        def batch_loss(picks: list[Tensor | None]) -> Tensor:
            """Σ_j λ_j · mean BCE of step j's examples ``picks[j]`` (None: none of that step)."""
            chosen = [j for j, pick in enumerate(picks) if pick is not None and len(pick)]
            batches = [targets[j].select(picks[j]) for j in chosen]  # type: ignore[arg-type]
            rows, compact = compact_batches(batches, looked_up, chosen)
            batch_tables = {name: t.select(rows[name]) if name in rows else t for name, t in tables.items()}
            generated = self._generate_rows(row, batch_tables, scales)
            # every chosen step's batch scored in one pass over the steps' tables, stacked
            tables_flat = {name: generated[name].flatten(0, 1) for name in self.live}
            parts_mixes = None
            if cat_rows is not None:
                cats = torch.cat([places[j] + j * len(cat_rows) for j in chosen])
                tables_flat["cat_emb"] = tables_flat["cat_emb"].index_select(0, cats)
                parts_mixes = [mixes[j].select(picks[j]) for j in chosen]  # type: ignore[union-attr, arg-type]
            steps = None if len(chosen) == len(window) else torch.tensor(chosen)
            heads = {
                name: generated[name] if steps is None else generated[name].index_select(0, steps) for name in self.mlp
            }
            sizes = [len(ex) for ex in compact]
            ex = concat_examples(compact)
            scores = parts_logits(tables_flat, heads, ex, sizes, self.learner.model.n_layers, parts_mixes)
            per_row = torch.cat([torch.full((n,), weights[j] / n) for j, n in zip(chosen, sizes, strict=True)])
            return F.binary_cross_entropy_with_logits(scores, ex.label, weight=per_row, reduction="sum")

        # the stopping rule: a slice of the newest target held back, scored after every epoch
        newest = torch.randperm(len(targets[-1]), generator=self.rng) if self.meta.holdout else None
        held = None
        if newest is not None:
            cut = min(len(newest) - 1, max(1, round(self.meta.holdout * len(newest))))
            held, newest = newest[:cut], newest[cut:]
            n_batches = max(1, math.ceil(len(newest) / self.meta.batch_size))
        best = self._held_loss(batch_loss, held, len(window))
        kept = self._generator_snapshot() if best is not None else None
        for _ in range(self.meta.epochs):
            self.generator.train()
            splits = [
                torch.randperm(len(t), generator=self.rng).tensor_split(n_batches) if w > 0 else None
                for t, w in zip(targets, weights, strict=True)
            ]
            if newest is not None and splits[-1] is not None:
                splits[-1] = newest[torch.randperm(len(newest), generator=self.rng)].tensor_split(n_batches)
            for b in range(n_batches):
                loss = batch_loss([split[b] if split is not None else None for split in splits])
                self.meta_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.meta_optimizer.step()
            now = self._held_loss(batch_loss, held, len(window))
            if now is not None and best is not None:
                if now >= best:  # this epoch did not help on held-back events: undo it and stop
                    self._restore_generator(kept)
                    break
                best, kept = now, self._generator_snapshot()

    def _held_loss(
        self, batch_loss: Callable[[list[Tensor | None]], Tensor], held: Tensor | None, steps: int
    ) -> float | None:
        """The loss of the window's last generated model on the held-back examples ``held`` of the newest target."""
        if held is None:
            return None
        self.generator.eval()
        with torch.no_grad():
            return float(batch_loss([None] * (steps - 1) + [held]))

    def _generator_snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({"generator": self.generator.state_dict(), "optimizer": self.meta_optimizer.state_dict()})

    def _restore_generator(self, snapshot: dict[str, Any] | None) -> None:
        assert snapshot is not None
        self.generator.load_state_dict(snapshot["generator"])
        self.meta_optimizer.load_state_dict(snapshot["optimizer"])

    def _generate_rows(self, row: _Row, tables: dict[str, _TableRows], scales: dict[str, float]) -> Params:
        """The generated parameters after every window step, stacked ``[T, ...]``:
        those of ``row`` and the rows of ``tables`` (those not in it), in order."""
        generated = self._row_output(row)
        rest = {name: table for name, table in tables.items() if name not in row.tables}
        if isinstance(self.generator, LinearCombiner):
            for name, table in rest.items():
                generated[name] = self._table_output(table, self._run([name], table.inputs, table.h, scales[name]))
            return generated
        for names in _by_width({name: table.inputs.shape[2] for name, table in rest.items()}):
            parts = [rest[name] for name in names]
            outs = self.generator.run_tables(
                names,
                [t.inputs for t in parts],
                [t.h if t.h is not None else self.generator.zero_state(t.inputs[0]) for t in parts],
                [scales[name] for name in names],
            )
            for name, table, out in zip(names, parts, outs, strict=True):
                generated[name] = self._table_output(table, out)
        return generated

    def _window_tables(
        self, window: list[Params], h0: dict[str, Tensor] | None, rows: dict[str, Tensor]
    ) -> dict[str, _TableRows]:
        """What the GRU is fed for rows ``rows[table]`` of every table. Live rows
        run from their own states; the others, which every version holds at
        their initial values, run as the cold sequence does (zero inputs, from
        the cold state), so each gets the cold sequence's output (plus its
        initial value, residual read-out)."""
        tables = {}
        for name, every in rows.items():
            versions = torch.stack([m[name].index_select(0, every) for m in window])
            live = self.live[name].index_select(0, every)
            h = h0[name].index_select(0, every) if h0 is not None else None
            if bool(live.all()):
                tables[name] = _TableRows(versions, live, versions, h)
                continue
            if h is not None:
                cold = self._cold(h0, name)
                h = torch.where(live[:, None, None], h, cold if cold is not None else torch.zeros(()))
            tables[name] = _TableRows(versions, live, versions * live.unsqueeze(1), h)
        return tables

    def _table_output(self, table: _TableRows, out: Tensor) -> Tensor:
        """The generated rows ``out [T, R, c]``, each dead row's initial value added
        back for the residual read-out (which added its zero input)."""
        if self.meta.readout == "residual" and table.inputs is not table.versions:
            return out + table.versions * ~table.live.unsqueeze(1)
        return out

    def _row(
        self,
        window: list[Params],
        h0: dict[str, Tensor] | None,
        scales: dict[str, float],
        tables: dict[str, _TableRows],
    ) -> _Row:
        """The MLP's tensors, and those of ``tables`` small enough (whole tables:
        every row of them), as the GRU is fed them side by side: one row of
        coordinates (a table's rows end to end), one GRU call for all."""
        small = {
            name: table
            for name, table in tables.items()
            if isinstance(self.generator, CoordinateGRU) and table.inputs[0].numel() <= ONE_ROW_MAX
        }
        names, widths = [*self.mlp, *small], [*self.mlp_widths, *(t.inputs[0].numel() for t in small.values())]
        inputs = torch.cat(
            [torch.stack([m[name].reshape(1, -1) for m in window]) for name in self.mlp]
            + [table.inputs.reshape(len(window), 1, -1) for table in small.values()],
            dim=2,
        )
        h = None
        if h0 is not None:
            states = [h0[name] for name in self.mlp]
            states += [t.h.reshape(1, -1, t.h.shape[-1]) for t in small.values() if t.h is not None]
            h = torch.cat(states, dim=1)
        scale: float | Tensor = 1.0
        if any(scales[name] != 1.0 for name in names):
            scale = torch.cat([torch.full((w,), scales[name]) for name, w in zip(names, widths, strict=True)])
        return _Row(names, widths, small, inputs, h, scale)

    def _row_output(self, row: _Row) -> Params:
        """The generated values of ``row``'s tensors after every window step, stacked ``[T, ...]``."""
        tiled = {name: len(t.live) for name, t in row.tables.items()}
        out = self._run(row.names, row.inputs, row.h, row.scale, tiled)[:, 0]
        steps = len(out)
        split = dict(zip(row.names, out.split(row.widths, dim=1), strict=True))
        generated = {name: split[name].reshape(steps, *self.shapes[name]) for name in self.mlp}
        for name, table in row.tables.items():
            generated[name] = self._table_output(table, split[name].reshape(steps, -1, self.shapes[name][1]))
        return generated

    def _cold(self, h0: dict[str, Tensor] | None, name: str) -> Tensor | None:
        """The cold sequence's state in ``h0``; None (zeros) without one, or in a state saved before there was one."""
        return h0.get(name + COLD) if h0 is not None else None

    @torch.no_grad()
    def _advance(self, first: Params, newest: Params, h0: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """The hidden state after the window's first version: each live row's,
        and the cold sequence's for every other row. Tables' states are
        updated in place, at live rows only: other rows' are never read
        (``update`` starts a row turning live from the cold state)."""
        assert isinstance(self.generator, CoordinateGRU)
        state = dict(h0) if h0 is not None else {}
        scales = self._scales(newest)
        full = {name: h0[name] if h0 is not None else self.generator.zero_state(first[name]) for name in self.live}
        where = {name: live.nonzero().squeeze(1) for name, live in self.live.items()}
        for names in _by_width({name: first[name].shape[1] for name in self.live}):
            stepped_rows = self.generator.step_tables(
                names,
                [_and_cold(first[name][where[name]]) / scales[name] for name in names],
                [_and_cold(full[name][where[name]], self._cold(h0, name)) for name in names],
            )
            for name, rows in zip(names, stepped_rows, strict=True):
                state[name] = full[name].index_copy_(0, where[name], rows[:-1])
                state[name + COLD] = rows[-1:].contiguous()
        # the MLP's tensors side by side, as in training
        row = self._row([first], h0, scales, {})
        x = row.inputs[0] / row.scale
        stepped = self.generator.step(row.names, x, row.h if row.h is not None else self.generator.zero_state(x))
        for name, part in zip(row.names, stepped.split(row.widths, dim=1), strict=True):
            state[name] = part.contiguous()
        return state

    @torch.no_grad()
    def generate(self) -> Params:
        """The serving model generated from the current window."""
        self.generator.eval()
        h0 = self.hidden if self.carries_state else None
        window = self._window()
        # per table, the live rows and one never-moved row standing for all the others
        dead = {name: (~live).nonzero()[:1, 0] for name, live in self.live.items()}
        rows = {name: torch.cat([live.nonzero().squeeze(1), dead[name]]) for name, live in self.live.items()}
        tables = self._window_tables(window, h0, rows)
        scales = self._scales(window[-1])
        stacked = self._generate_rows(self._row(window, h0, scales, tables), tables, scales)
        generated = {name: value[-1] for name, value in stacked.items()}
        for name in self.live:
            if not len(dead[name]):
                continue  # every row live: the table is whole
            out, newest, where = generated[name], window[-1][name], rows[name][:-1]
            shift = out[-1:] - newest[dead[name]] if self.meta.readout == "residual" else None
            # one new table, filled in place: each fresh 2 MB tensor costs ~1 ms in page faults alone
            filled = newest + shift if shift is not None else out[-1:].expand_as(newest).clone()
            generated[name] = filled.index_copy_(0, where, out[:-1])
        if self.meta.blend != 1.0:
            iu = window[-1]
            generated = {name: torch.lerp(iu[name], value, self.meta.blend) for name, value in generated.items()}
        return generated

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
            "live": self.live,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        optimizer_state = state["meta_optimizer"]
        if isinstance(self.generator, CoordinateGRU):  # saved with the GRU's weights per base-model tensor
            optimizer_state = join_saved_optimizer_state(optimizer_state, self.generator)
        self.meta_optimizer.load_state_dict(optimizer_state)
        self.rng.set_state(state["rng"])
        self.models = list(state["models"])
        self.periods = [Examples.from_dict(p) for p in state["periods"]]
        self.mixes = []  # made again from the periods at the next update
        self.hidden = state["hidden"]
        self.meta_periods = int(state["meta_periods"])
        # a state saved before live rows were tracked generated every row: keep doing so
        self.live = state.get("live") or {t: torch.ones_like(v) for t, v in self.live.items()}
