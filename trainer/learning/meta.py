"""Meta generators: map a window of base-model versions to a new version.

Every scalar coordinate of the base model is a sequence over versions. The
GRU generator (docs/method.md §3) runs one small GRU per coordinate *group*: one per
MLP scalar, one per embedding column shared across the rows of that column.
All groups of one parameter tensor advance together as batched tensor ops;
there is no Python loop over coordinates.

Shapes: a parameter tensor is viewed as ``[rows, cols]`` (an embedding table
as itself, an MLP tensor as one row). A GRU group per column owns weights of
shape ``[cols, ...]``; rows share them.

Where the C kernels built (:mod:`trainer.learning.native`), a window runs there, one
call a table and one for the MLP's row (:class:`_NativeWindow`): a block of
rows goes through every step with its gates in cache. Otherwise it runs in
torch as follows, with the same values and gradients.

The columns are worked in groups of a few (:func:`group_columns`): a group's
GRUs form one small GRU whose weights are block-diagonal, so a step over all
rows is a handful of batched matrix products and elementwise ops, with the
forward and backward passes written out by hand (:class:`_GroupedWindow`).
Two or more columns per group trade a few zero multiplications for far
fewer, larger products; the MLP's single row, with nothing to batch over,
runs with its coordinates on the last axis instead (:class:`_CoordinateWindow`).
Tables of as many columns run as one window:
their rows cut into chunks of one size, every chunk's groups side by side
(:class:`_Chunks`), so a small table pays no call of its own.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from trainer.core.model import EMBEDDING_TABLES
from trainer.learning import native

log = logging.getLogger(__name__)

Readout = Literal["plain", "residual"]
Names = str | Sequence[str]  # one parameter tensor, or several run side by side


def _names(names: Names) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


class _Blocks(NamedTuple):
    """Weights of ``G`` column groups, ``cg`` columns and ``w = cg·d`` hidden
    units each (unit ``k`` of a group's column ``i`` is ``i·d + k``), laid out
    to act on states ``[G, w, R]`` from the left; gates lie as ``[r; z; ĥ]``,
    ``w`` each, zero outside a column's block."""

    input: Tensor  # [G, 3w, cg]
    gate_bias: Tensor | None  # [G, 3w]
    hidden_rz: Tensor  # [G, 2w, w]
    hidden_h: Tensor  # [G, w, w]
    out_w: Tensor  # [G, cg, w]
    out_b: Tensor  # [G, cg]


# Hidden units per column group on tables of many rows. Larger groups mean
# fewer, larger products but more multiplications by zero: for 2,747 rows × 8
# columns (3 steps, forward and backward) 4 to 16 units measured alike, ~6 ms,
# and 32 units ~25% slower.
GROUP_UNITS = 8


def group_columns(cols: int, rows: int, hidden: int) -> int:
    """Columns per group: the largest divisor of ``cols`` within
    :data:`GROUP_UNITS` units; one per group for a single row (the MLP's),
    where there is nothing to batch over."""
    if rows < 2:
        return 1
    return max(g for g in range(1, max(1, GROUP_UNITS // hidden) + 1) if cols % g == 0)


# At most this many chunks of the largest table: more, smaller chunks make
# more, smaller matrix products, and a table of a few rows pads its one chunk.
MAX_CHUNKS = 8


def _chunk_rows(rows: Sequence[int]) -> int:
    """The chunk size tables of ``rows`` rows are cut into to run as one: the
    largest table in near-equal chunks no smaller than the smallest table (at
    most :data:`MAX_CHUNKS` of them), which keeps the zero rows that fill each
    table's last chunk few."""
    least, most = max(1, min(rows)), max(rows)
    return -(-most // min(MAX_CHUNKS, most // least))


class _Chunks(NamedTuple):
    """Tables cut into chunks of ``size`` rows (``counts[i]`` for table i) to
    run as one: each chunk's column groups side by side, table after table."""

    rows: list[int]
    size: int
    counts: list[int]

    @staticmethod
    def of(rows: Sequence[int]) -> _Chunks:
        size = _chunk_rows(rows)
        return _Chunks(list(rows), size, [-(-r // size) for r in rows])

    def lay(self, parts: Sequence[Tensor], groups: int) -> Tensor:
        """Each table's ``[T, R, w]`` (``w`` = c·e: e units per column), rows padded
        with zeros to whole chunks, as ``[k·G, w/G, T·size]``, tables end to end;
        a group's units are its columns' in order, every step side by side."""
        laid = []
        for t, r, k in zip(parts, self.rows, self.counts, strict=True):
            if k * self.size > r:  # zero rows to fill the last chunk; their outputs are dropped
                t = torch.cat([t, t.new_zeros(t.shape[0], k * self.size - r, t.shape[2])], dim=1)
            steps = t.shape[0]
            laid.append(
                t.reshape(steps, k, self.size, -1).permute(1, 3, 0, 2).reshape(k * groups, -1, steps * self.size)
            )
        return laid[0] if len(laid) == 1 else torch.cat(laid)

    def unlay(self, laid: Tensor, groups: int, steps: int) -> list[Tensor]:
        """The inverse of :meth:`lay`: each table's ``[T, R, w]``."""
        parts = laid.split([k * groups for k in self.counts])
        return [
            part.view(k, -1, steps, self.size).permute(2, 0, 3, 1).reshape(steps, k * self.size, -1)[:, :r]
            for part, r, k in zip(parts, self.rows, self.counts, strict=True)
        ]


def _to_groups(x: Tensor, groups: int) -> Tensor:
    """``[R, c]`` or ``[R, c, d]`` → ``[G, c/G (·d), R]``. Rows are the last,
    contiguous axis throughout, so every elementwise op runs along rows; with
    the short unit axis last, ops ran ~3x slower."""
    return x.reshape(x.shape[0], -1).t().contiguous().view(groups, -1, x.shape[0])


def _from_groups(x: Tensor, *shape: int) -> Tensor:
    """The inverse of :func:`_to_groups`, to ``shape``."""
    return x.reshape(-1, x.shape[-1]).t().reshape(*shape)


def _gates_in(w: _Blocks, x: Tensor) -> Tensor:
    """The input's terms of every gate, ``[G, 3w, R]``, for ``x [G, cg, R]``."""
    return torch.bmm(w.input, x) if w.gate_bias is None else torch.baddbmm(w.gate_bias.unsqueeze(-1), w.input, x)


def _block_step(
    w: _Blocks, gates_in: Tensor, h: Tensor, out: Tensor, rh: Tensor, saved: list[Tensor] | None = None
) -> Tensor:
    """One step on ``h [G, w, R]`` into ``out``, with ``r⊙h`` into ``rh``;
    ``r;z`` and ``ĥ`` are appended to ``saved`` for the backward pass."""
    units = h.shape[1]
    rz = torch.sigmoid(torch.baddbmm(gates_in[:, : 2 * units], w.hidden_rz, h))
    torch.mul(rz[:, :units], h, out=rh)
    # tanh(a) = 2σ(2a) − 1: ATen's CPU tanh is ~4x slower than its sigmoid; the 2a comes from the product
    candidate = torch.baddbmm(gates_in[:, 2 * units :], w.hidden_h, rh, beta=2, alpha=2).sigmoid_().mul_(2).sub_(1)
    if saved is not None:
        saved += [rz, candidate]
    return torch.lerp(h, candidate, rz[:, units:], out=out)


def _read_out(w: _Blocks, h: Tensor) -> Tensor:
    return torch.baddbmm(w.out_b.unsqueeze(-1), w.out_w, h)


class _GroupedWindow(torch.autograd.Function):
    """A window of GRU steps: ``h0 [G, w, R]`` and every step's inputs side by
    side, ``xs [G, cg, T·R]`` → every step's read-out, laid out the same way.
    Autograd would record ~20 tensor ops a step and zero-fill whole gate
    tensors to back-propagate through their slices; this is ~2x faster.
    States and gate gradients of all steps lie side by side along the rows
    too, so each weight's gradient is one product."""

    @staticmethod
    def forward(
        ctx: Any,
        h0: Tensor,
        input: Tensor,
        gate_bias: Tensor | None,
        hidden_rz: Tensor,
        hidden_h: Tensor,
        out_w: Tensor,
        out_b: Tensor,
        xs: Tensor,
    ) -> Tensor:
        w = _Blocks(input, gate_bias, hidden_rz, hidden_h, out_w, out_b)
        rows = h0.shape[2]
        steps = xs.shape[2] // rows
        states = h0.new_empty(*h0.shape[:2], (steps + 1) * rows)  # h_0 … h_T
        states[..., :rows] = h0
        rh_all = h0.new_empty(*h0.shape[:2], steps * rows)
        gates_in = _gates_in(w, xs)
        gates: list[Tensor] = []  # r;z and ĥ of each step
        for t in range(steps):
            now, after = slice(t * rows, (t + 1) * rows), slice((t + 1) * rows, (t + 2) * rows)
            _block_step(w, gates_in[..., now], states[..., now], states[..., after], rh_all[..., now], gates)
        ctx.has_bias = gate_bias is not None
        ctx.save_for_backward(input, hidden_rz, hidden_h, out_w, states, rh_all, xs, *gates)
        return _read_out(w, states[..., rows:])

    @staticmethod
    def backward(ctx: Any, d_reads: Tensor) -> tuple[Tensor | None, ...]:
        input, hidden_rz, hidden_h, out_w, states, rh_all, xs, *gates = ctx.saved_tensors
        steps, units = len(gates) // 2, hidden_h.shape[1]
        rows = states.shape[2] // (steps + 1)
        # transposed once: products with a transposed view of a tiny matrix are ~4x slower
        rz_t, h_t, out_t = (m.transpose(1, 2).contiguous() for m in (hidden_rz, hidden_h, out_w))
        d_reads = d_reads.contiguous()
        d_gates = states.new_empty(states.shape[0], 3 * units, steps * rows)  # of [r; z; ĥ]'s inputs
        dh: Tensor | None = None
        for t in reversed(range(steps)):
            now = slice(t * rows, (t + 1) * rows)
            h, rz, candidate, d = states[..., now], gates[2 * t], gates[2 * t + 1], d_gates[..., now]
            dh = torch.bmm(out_t, d_reads[..., now]) if dh is None else torch.baddbmm(dh, out_t, d_reads[..., now])
            d_candidate = dh * rz[:, units:]
            torch.mul(dh, candidate - h, out=d[:, units : 2 * units])
            torch.addcmul(d_candidate, d_candidate * candidate, candidate, value=-1, out=d[:, 2 * units :])
            d_rh = torch.bmm(h_t, d[:, 2 * units :])
            torch.mul(d_rh, h, out=d[:, :units])
            d[:, : 2 * units].mul_(torch.addcmul(rz, rz, rz, value=-1))  # σ' = σ − σ²
            dh = (dh - d_candidate).addcmul_(d_rh, rz[:, :units]).baddbmm_(rz_t, d[:, : 2 * units])
        return (
            dh,
            torch.bmm(d_gates, xs.transpose(1, 2)),
            d_gates.sum(2) if ctx.has_bias else None,
            torch.bmm(d_gates[:, : 2 * units], states[..., : steps * rows].transpose(1, 2)),
            torch.bmm(d_gates[:, 2 * units :], rh_all.transpose(1, 2)),
            torch.bmm(d_reads, states[..., rows:].transpose(1, 2)),
            d_reads.sum(2),
            torch.bmm(input.transpose(1, 2), d_gates) if ctx.needs_input_grad[7] else None,
        )


class _Joined(NamedTuple):
    """Weights of ``C`` coordinate GRUs, one per coordinate, as the parameters
    hold them (``[C, ...]``)."""

    input: Tensor  # [C, 3d]
    gate_bias: Tensor | None  # [C, 3d]
    hidden_rz: Tensor  # [C, d, 2d]
    hidden_h: Tensor  # [C, d, d]
    out_w: Tensor  # [C, d]
    out_b: Tensor  # [C]


def _coordinate_steps(
    w: _Joined, h0: Tensor, xs: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The GRU steps of a single row, coordinates on the last axis: ``h0 [d, C]``,
    ``xs [T, C]`` → states ``[T+1, d, C]``, ``r;z [T, 2d, C]``, ``ĥ [T, d, C]``,
    ``r⊙h [T, d, C]``, and the weights so laid out (``[3d, C]``, ``[d, 2d, C]``,
    ``[d, d, C]``). Each coordinate has its own small matrices, so every product
    is a multiply and a sum over the outermost axis: elementwise work, where a
    batched product over ~1,000 4×4 matrices runs ~5x slower."""
    d, steps = h0.shape[0], xs.shape[0]
    w_in = w.input.t().contiguous()
    u_rz, u_h = (u.permute(1, 2, 0).contiguous() for u in (w.hidden_rz, w.hidden_h))
    gates_in = w_in * xs.unsqueeze(1)  # [T, 3d, C]
    if w.gate_bias is not None:
        gates_in += w.gate_bias.t()
    states = h0.new_empty(steps + 1, *h0.shape)
    states[0] = h0
    rz, candidate, rh = (h0.new_empty(steps, k * d, h0.shape[1]) for k in (2, 1, 1))
    for t in range(steps):
        h = states[t]
        torch.sigmoid(torch.add(gates_in[t, : 2 * d], (u_rz * h.unsqueeze(1)).sum(0)), out=rz[t])
        torch.mul(rz[t, :d], h, out=rh[t])
        # tanh(a) = 2σ(2a) − 1, as in _block_step
        a = torch.add(gates_in[t, 2 * d :], (u_h * rh[t].unsqueeze(1)).sum(0))
        torch.sigmoid(a.mul_(2), out=candidate[t]).mul_(2).sub_(1)
        torch.lerp(h, candidate[t], rz[t, d:], out=states[t + 1])
    return states, rz, candidate, rh, w_in, u_rz, u_h


class _CoordinateWindow(torch.autograd.Function):
    """A window of GRU steps for a single row (the MLP's): ``h0 [C, d]``,
    ``xs [T, C]`` → every step's read-out ``[T, C]``, with the backward pass
    written out as :class:`_GroupedWindow`'s is, coordinates last."""

    @staticmethod
    def forward(
        ctx: Any,
        h0: Tensor,
        input: Tensor,
        gate_bias: Tensor | None,
        hidden_rz: Tensor,
        hidden_h: Tensor,
        out_w: Tensor,
        out_b: Tensor,
        xs: Tensor,
    ) -> Tensor:
        w = _Joined(input, gate_bias, hidden_rz, hidden_h, out_w, out_b)
        states, rz, candidate, rh, w_in, u_rz, u_h = _coordinate_steps(w, h0.t(), xs)
        w_out = out_w.t().contiguous()
        ctx.has_bias = gate_bias is not None
        ctx.save_for_backward(states, rz, candidate, rh, w_in, u_rz, u_h, w_out, xs)
        return (w_out * states[1:]).sum(1) + out_b

    @staticmethod
    def backward(ctx: Any, d_reads: Tensor) -> tuple[Tensor | None, ...]:
        states, rz, candidate, rh, w_in, u_rz, u_h, w_out, xs = ctx.saved_tensors
        steps, d = xs.shape[0], states.shape[1]
        d_reads = d_reads.contiguous()
        d_gates = states.new_empty(steps, 3 * d, states.shape[2])  # of [r; z; ĥ]'s inputs
        dh: Tensor | None = None
        for t in reversed(range(steps)):
            h, g, dg = states[t], rz[t], d_gates[t]
            dh = w_out * d_reads[t] if dh is None else dh.addcmul_(w_out, d_reads[t])
            d_candidate = dh * g[d:]
            torch.mul(dh, candidate[t] - h, out=dg[d : 2 * d])
            torch.addcmul(d_candidate, d_candidate * candidate[t], candidate[t], value=-1, out=dg[2 * d :])
            d_rh = (u_h * dg[2 * d :].unsqueeze(0)).sum(1)
            torch.mul(d_rh, h, out=dg[:d])
            dg[: 2 * d].mul_(torch.addcmul(g, g, g, value=-1))  # σ' = σ − σ²
            dh = (dh - d_candidate).addcmul_(d_rh, g[:d]).add_((u_rz * dg[: 2 * d].unsqueeze(0)).sum(1))
        assert dh is not None
        return (
            dh.t(),
            (d_gates * xs.unsqueeze(1)).sum(0).t(),
            d_gates.sum(0).t() if ctx.has_bias else None,
            (states[:steps].unsqueeze(2) * d_gates[:, : 2 * d].unsqueeze(1)).sum(0).permute(2, 0, 1),
            (rh.unsqueeze(2) * d_gates[:, 2 * d :].unsqueeze(1)).sum(0).permute(2, 0, 1),
            (states[1:] * d_reads.unsqueeze(1)).sum(0).t(),
            d_reads.sum(0),
            (w_in * d_gates).sum(1) if ctx.needs_input_grad[7] else None,
        )


def _kernel_weights(w: _Joined, per_row: bool) -> tuple[Tensor, ...]:
    """Weights as the C kernels take them (trainer/learning/native/gru.c): per column as
    joined, or per row with the row axis last; no gate bias is a zero one."""
    bias = w.gate_bias if w.gate_bias is not None else torch.zeros_like(w.input)
    if not per_row:
        return (w.input, bias, w.hidden_rz, w.hidden_h, w.out_w, w.out_b)
    return (
        w.input.t().contiguous(),
        bias.t().contiguous(),
        w.hidden_rz.permute(1, 2, 0).contiguous(),
        w.hidden_h.permute(1, 2, 0).contiguous(),
        w.out_w.t().contiguous(),
        w.out_b,
    )


def _kernel_layout(x: Tensor, h: Tensor, per_row: bool) -> tuple[Tensor, Tensor]:
    """Inputs ``[T, R, c]`` and states ``[R, c, d]`` as the kernels take them, rows
    last; a single row's coordinates (``per_row``) are the kernels' rows."""
    if per_row:
        return x.contiguous(), h[0].t().unsqueeze(0).contiguous()
    return x.permute(0, 2, 1).contiguous(), h.permute(1, 2, 0).contiguous()


class _NativeWindow(torch.autograd.Function):
    """:class:`_GroupedWindow`'s or :class:`_CoordinateWindow`'s steps in C: ``h0
    [C, d, R]``, ``xs [T, C, R]`` → read-outs ``[T, C, R]``, for the rows of C
    columns that share a column's weights, or (``per_row``) for one column whose
    R rows each have their own (the MLP's coordinates)."""

    @staticmethod
    def forward(
        ctx: Any,
        h0: Tensor,
        per_row: bool,
        input: Tensor,
        gate_bias: Tensor | None,
        hidden_rz: Tensor,
        hidden_h: Tensor,
        out_w: Tensor,
        out_b: Tensor,
        xs: Tensor,
    ) -> Tensor:
        weights = _kernel_weights(_Joined(input, gate_bias, hidden_rz, hidden_h, out_w, out_b), per_row)
        states, reads = native.window_forward(per_row, xs, h0, weights)
        ctx.per_row, ctx.has_bias = per_row, gate_bias is not None
        ctx.save_for_backward(xs, states, *weights)
        return reads

    @staticmethod
    def backward(ctx: Any, d_reads: Tensor) -> tuple[Tensor | None, ...]:
        xs, states, *weights = ctx.saved_tensors
        inputs_too = ctx.needs_input_grad[0] or ctx.needs_input_grad[8]
        g, d_xs, d_h0 = native.window_backward(
            ctx.per_row, xs, states, tuple(weights), d_reads.contiguous(), inputs_too
        )
        if ctx.per_row:  # back to the weights' own layout, rows (coordinates) first
            g = (g[0].t(), g[1].t(), g[2].permute(2, 0, 1), g[3].permute(2, 0, 1), g[4].t(), g[5])
        return (d_h0, None, g[0], g[1] if ctx.has_bias else None, g[2], g[3], g[4], g[5], d_xs)


def _unit(scale: float | Tensor) -> bool:
    return isinstance(scale, float) and scale == 1.0


def as_rows(name: str, value: Tensor) -> Tensor:
    """View a parameter as ``[rows, cols]``: embedding tables keep their rows."""
    return value if name in EMBEDDING_TABLES else value.reshape(1, -1)


def _column_counts(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    return {n: int(as_rows(n, torch.empty(s, device="meta")).shape[1]) for n, s in shapes.items()}


def module_key(name: str) -> str:
    """A parameter name as a ModuleDict / ParameterDict key (no dots)."""
    return name.replace(".", "__")


def _uniform(shape: tuple[int, ...], bound: float) -> Tensor:
    return torch.empty(shape).uniform_(-bound, bound)


def _join_saved_tensors(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load a state saved when each base-model tensor had its own GRU weights
    (``hidden_rz.<tensor>``, ...): join them as the parameters now hold them."""
    assert isinstance(module, CoordinateGRU)
    for kind in WEIGHT_KINDS:
        keys = [f"{prefix}{kind}.{module_key(name)}" for name in module.names]
        if keys[0] in state:
            state[prefix + kind] = torch.cat([state.pop(key) for key in keys])


def join_saved_optimizer_state(state: dict[str, Any], generator: CoordinateGRU) -> dict[str, Any]:
    """An optimiser state saved when the generator had one parameter per weight
    kind and base-model tensor, joined as :func:`_join_saved_tensors` joins the
    parameters (Adam's moments are per coordinate; its step count is shared)."""
    (group,) = state["param_groups"]
    kinds, names = len(list(generator.parameters())), len(generator.names)
    if len(group["params"]) != kinds * names:
        return state
    joined: dict[int, dict[str, Any]] = {}
    for k in range(kinds):
        saved = [state["state"][i] for i in group["params"][k * names : (k + 1) * names] if i in state["state"]]
        if saved:
            joined[k] = {
                key: torch.cat([s[key] for s in saved]) if saved[0][key].dim() else saved[0][key] for key in saved[0]
            }
    return {"state": joined, "param_groups": [{**group, "params": list(range(kinds))}]}


# the GRU weights' kinds, in the order the parameters are registered
WEIGHT_KINDS = ("hidden_rz", "hidden_h", "input_w", "gate_b", "out_w", "out_b")


class CoordinateGRU(nn.Module):
    """One GRU (hidden size ``d``) per coordinate group, with a linear read-out.

    ``readout="plain"`` is the paper's ``θ* = w·h + b``; ``"residual"`` is
    ``θ* = θ_last + w·h + b`` with ``w = b = 0`` at start, so an untrained
    generator returns the newest model it was given.

    Each kind of weight is one parameter over the columns of every base-model
    tensor, in the order of ``shapes`` (``span``: where a tensor's lie, start and end):
    tensors that run side by side take one gather of each kind, and the
    optimiser steps six tensors rather than six per base-model tensor.
    """

    hidden_rz: nn.Parameter  # [C, d, 2d]: h → (r, z)
    hidden_h: nn.Parameter  # [C, d, d]: r⊙h → ĥ
    input_w: nn.Parameter  # [C, 3d]: θ → (r, z, ĥ)
    gate_b: nn.Parameter | None  # [C, 3d]
    out_w: nn.Parameter  # [C, d]
    out_b: nn.Parameter  # [C]

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        hidden: int = 4,
        readout: Readout = "plain",
        gate_bias: bool = False,
        native_kernels: bool = True,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.native_kernels = native_kernels
        if native_kernels and hidden > native.MAX_HIDDEN:
            log.warning("the GRU kernels take hidden sizes up to %d, not %d: runs in torch", native.MAX_HIDDEN, hidden)
        self.readout = readout
        self.names = list(shapes)
        self.cols = _column_counts(shapes)
        starts = itertools.accumulate(self.cols.values(), initial=0)
        self.span = {name: (start, start + c) for (name, c), start in zip(self.cols.items(), starts, strict=False)}
        d = hidden
        gate_bound = math.sqrt(6.0 / (2 * d + 1))  # Glorot on the [d+1, d] map from [h, θ]
        out_bound = math.sqrt(6.0 / (d + 2))  # Glorot on the [d+1, 1] read-out
        parts: dict[str, list[Tensor]] = {kind: [] for kind in WEIGHT_KINDS}
        for c in self.cols.values():  # drawn tensor by tensor, in the order one parameter each had
            parts["hidden_rz"].append(_uniform((c, d, 2 * d), gate_bound))
            parts["hidden_h"].append(_uniform((c, d, d), gate_bound))
            parts["input_w"].append(_uniform((c, 3 * d), gate_bound))
            parts["gate_b"].append(torch.zeros(c, 3 * d))
            if readout == "plain":
                parts["out_w"].append(_uniform((c, d), out_bound))
                parts["out_b"].append(_uniform((c,), out_bound))
            else:
                parts["out_w"].append(torch.zeros(c, d))
                parts["out_b"].append(torch.zeros(c))
        for kind, values in parts.items():
            value = nn.Parameter(torch.cat(values)) if kind != "gate_b" or gate_bias else None
            self.register_parameter(kind, value)
        self.register_load_state_dict_pre_hook(_join_saved_tensors)

    @property
    def kernels(self) -> bool:
        """Whether the windows run in C (:mod:`trainer.learning.native`): asked for, and built."""
        return self.native_kernels and self.hidden <= native.MAX_HIDDEN and native.library() is not None

    def zero_state(self, x: Tensor) -> Tensor:
        """The initial state ``[R, c, d]`` for inputs ``x [R, c]``."""
        return x.new_zeros(*x.shape, self.hidden)

    @torch.no_grad()
    def step(self, names: Names, x: Tensor, h: Tensor) -> Tensor:
        """One GRU step for every coordinate: ``x [R, c]``, ``h [R, c, d]`` (no gradient: the state carry)."""
        if x.shape[0] == 1:  # as run steps a single row
            if self.kernels:
                return self._native_step(names, x, h, per_row=True)
            return _coordinate_steps(self.weights(names), h[0].t(), x)[0][1].t().unsqueeze(0)
        (name,) = _names(names)
        return self.step_tables([name], [x], [h])[0]

    @torch.no_grad()
    def step_tables(self, names: Sequence[str], xs: Sequence[Tensor], hs: Sequence[Tensor]) -> list[Tensor]:
        """:meth:`step` for several tables of as many columns, as one (see :meth:`run_tables`)."""
        if self.kernels:
            return [self._native_step(name, x, h, per_row=False) for name, x, h in zip(names, xs, hs, strict=True)]
        chunks, w, groups, state = self._chunked(names, hs)
        x_in = _gates_in(w, chunks.lay([x.unsqueeze(0) for x in xs], groups))
        stepped = _block_step(w, x_in, state, torch.empty_like(state), torch.empty_like(state))
        return [h.view(h.shape[1], *old.shape[1:]) for h, old in zip(chunks.unlay(stepped, groups, 1), hs, strict=True)]

    def read(self, names: Names, h: Tensor, last: Tensor, scale: float | Tensor = 1.0) -> Tensor:
        """The generated version from ``h [R, c, d]``; ``last [R, c]`` is the newest input version."""
        w = self._blocks(names, h.shape[0])
        return self._finish(_from_groups(_read_out(w, _to_groups(h, w.input.shape[0])), *last.shape), last, scale)

    def run(
        self,
        names: Names,
        inputs: Tensor | Sequence[Tensor],
        h0: Tensor,
        scale: float | Tensor = 1.0,
        tiled: Mapping[str, int] | None = None,
    ) -> Tensor:
        """Feed a window of ``[R, c]`` versions (stacked, ``[T, R, c]``, or a
        sequence) from state ``h0``; return every step's generated version,
        stacked: ``[T, R, c]``.

        Several parameter tensors of one row each (the MLP's) run as one, their
        columns side by side: ``names`` lists them in the order of the columns.
        A table in ``tiled`` joins such a row as that many of its rows, laid
        end to end, each column of each row with its column's GRU.
        The GRU sees ``θ / scale`` (a float, or one per column) and its read-out
        is multiplied by ``scale``, so a ``scale`` near the parameter's magnitude
        gives it inputs of order one.
        """
        stacked = inputs if isinstance(inputs, Tensor) else torch.stack(list(inputs))
        if h0.shape[0] == 1:
            seen = stacked if _unit(scale) else stacked / scale
            if self.kernels:
                return self._finish(self._native_steps(names, seen, h0, tiled, per_row=True), stacked, scale)
            reads = _CoordinateWindow.apply(h0[0], *self.weights(names, tiled), seen[:, 0])
            return self._finish(reads.unsqueeze(1), stacked, scale)
        if tiled:
            raise ValueError("a table is tiled only into a single row")
        (name,) = _names(names)
        return self.run_tables([name], [stacked], [h0], [scale])[0]

    def run_tables(
        self,
        names: Sequence[str],
        inputs: Sequence[Tensor],
        h0s: Sequence[Tensor],
        scales: Sequence[float | Tensor],
    ) -> list[Tensor]:
        """:meth:`run` for several tables of as many columns (``inputs[i]``:
        ``[T, R_i, c]``) in one window: each table's rows are cut into chunks of
        one common size, and every chunk's column groups lie side by side (a
        table's chunks with its weights), so the tables share one set of
        operations where each would pay its own (~0.5 ms a table, forward and
        backward, on a few hundred rows). In C each table is a call of its own,
        which costs next to nothing there."""
        seen = [x if _unit(scale) else x / scale for x, scale in zip(inputs, scales, strict=True)]
        if self.kernels:
            per_step = [
                self._native_steps(name, x, h, None, per_row=False) for name, x, h in zip(names, seen, h0s, strict=True)
            ]
            return [self._finish(y, x, scale) for y, x, scale in zip(per_step, inputs, scales, strict=True)]
        chunks, w, groups, state = self._chunked(names, h0s)
        reads = _GroupedWindow.apply(state, *w, chunks.lay(seen, groups))
        per_step = chunks.unlay(reads, groups, inputs[0].shape[0])
        return [self._finish(y, x, scale) for y, x, scale in zip(per_step, inputs, scales, strict=True)]

    def _native_steps(
        self, names: Names, x: Tensor, h0: Tensor, tiled: Mapping[str, int] | None, per_row: bool
    ) -> Tensor:
        """Every step's read-out ``[T, R, c]`` of inputs ``x [T, R, c]`` from ``h0
        [R, c, d]``, in C; ``per_row``: a single row, each coordinate with its own GRU."""
        xk, hk = _kernel_layout(x, h0, per_row)
        reads = _NativeWindow.apply(hk, per_row, *self.weights(names, tiled), xk)
        return reads if per_row else reads.permute(0, 2, 1)

    def _native_step(self, names: Names, x: Tensor, h: Tensor, per_row: bool) -> Tensor:
        """One step of ``x [R, c]`` from ``h [R, c, d]``, in C, without gradient."""
        xk, hk = _kernel_layout(x.unsqueeze(0), h, per_row)
        states, _ = native.window_forward(per_row, xk, hk, _kernel_weights(self.weights(names), per_row))
        return states[1, 0].t().unsqueeze(0) if per_row else states[1].permute(2, 0, 1)

    def _chunked(self, names: Sequence[str], hs: Sequence[Tensor]) -> tuple[_Chunks, _Blocks, int, Tensor]:
        """Tables with states ``hs [R_i, c, d]`` laid out to run as one: their
        chunks, the weights once per chunk, the column groups per chunk, and
        the states so laid out."""
        chunks = _Chunks.of([h.shape[0] for h in hs])
        w = self._blocks(names, max(chunks.rows), dict(zip(names, chunks.counts, strict=True)))
        groups = w.input.shape[0] // sum(chunks.counts)
        return chunks, w, groups, chunks.lay([h.reshape(1, h.shape[0], -1) for h in hs], groups)

    def weights(self, names: Names, tiled: Mapping[str, int] | None = None) -> _Joined:
        """The GRU weights of ``names``' columns side by side, a tiled table's once
        per row: one gather per weight kind (a slice for a single tensor)."""
        tiled = tiled or {}
        pick: Callable[[Tensor], Tensor]
        if isinstance(names, str) and tiled.get(names, 1) == 1:  # one tensor's columns: a slice, no copy
            start, end = self.span[names]
            pick = lambda weight: weight[start:end]  # noqa: E731
        else:
            columns = [torch.arange(*self.span[name]).repeat(tiled.get(name, 1)) for name in _names(names)]
            index = columns[0] if len(columns) == 1 else torch.cat(columns)
            pick = lambda weight: weight.index_select(0, index)  # noqa: E731
        return _Joined(
            input=pick(self.input_w),
            gate_bias=None if self.gate_b is None else pick(self.gate_b),
            hidden_rz=pick(self.hidden_rz),
            hidden_h=pick(self.hidden_h),
            out_w=pick(self.out_w),
            out_b=pick(self.out_b),
        )

    def _blocks(self, names: Names, rows: int, tiled: Mapping[str, int] | None = None) -> _Blocks:
        """The GRU weights of ``names``' columns, side by side (a tiled table's
        once per tile), in column groups of the first tensor's grouping."""
        j = self.weights(names, tiled)
        d = self.hidden
        per = group_columns(self.cols[_names(names)[0]], rows, d)
        groups = j.input.shape[0] // per
        eye = torch.eye(per)

        def blocks(spec: str, weights: Tensor) -> Tensor:
            """Column ``c``'s weights in block (c, c): the product with the identity ``e``,
            or, with one column per group, just the axes in the output's order."""
            given, out = spec.split("->")
            if per == 1:
                return torch.einsum(f"{given}->{out.replace('e', '')}", weights)
            return torch.einsum(f"{given},ce->{out}", weights, eye)

        w, rz = per * d, j.hidden_rz.view(groups, per, d, 2, d)
        bias = j.gate_bias
        return _Blocks(
            input=blocks("gcsj->gsejc", j.input.view(groups, per, 3, d)).reshape(groups, 3 * w, per),
            gate_bias=None if bias is None else bias.view(groups, per, 3, d).transpose(1, 2).reshape(groups, -1),
            hidden_rz=blocks("gcisj->gsejci", rz).reshape(groups, 2 * w, w),
            hidden_h=blocks("gcij->gejci", j.hidden_h.view(groups, per, d, d)).reshape(groups, w, w),
            out_w=blocks("gci->geci", j.out_w.view(groups, per, d)).reshape(groups, per, w),
            out_b=j.out_b.view(groups, per),
        )

    def _finish(self, read: Tensor, last: Tensor, scale: float | Tensor) -> Tensor:
        """A read-out scaled back, plus the newest input ``last`` for the residual
        form (every step's, for a window's read-outs ``[T, R, c]``)."""
        out = read if _unit(scale) else read * scale
        return out if self.readout == "plain" else out + last


class LinearCombiner(nn.Module):
    """ASMG-Linear: ``θ* = Σ_i α_i θ_i`` with one learnable weight per window
    position and parameter tensor, starting as the plain average."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], window: int) -> None:
        super().__init__()
        self.alpha = nn.ParameterDict(
            {module_key(n): nn.Parameter(torch.full((window,), 1.0 / window)) for n in shapes}
        )
        self.cols = _column_counts(shapes)

    def combine(self, names: Names, inputs: Sequence[Tensor]) -> Tensor:
        """``Σ_i α_i θ_i`` for ``[R, c]`` versions of one tensor, or of several
        side by side (``names`` in column order)."""
        alphas = [self.alpha[module_key(n)] for n in _names(names)]
        if len(alphas) == 1:
            alpha = alphas[0].unsqueeze(1)  # [window, 1]
        else:
            # a column per coordinate: each tensor's weights repeated over its columns
            widths = [self.cols[n] for n in _names(names)]
            alpha = torch.cat([a.unsqueeze(1).expand(-1, w) for a, w in zip(alphas, widths, strict=True)], dim=1)
        return sum((a * x for a, x in zip(alpha, inputs, strict=True)), torch.zeros_like(inputs[0]))
