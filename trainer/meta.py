"""Meta generators: map a window of base-model versions to a new version.

Every scalar coordinate of the base model is a sequence over versions. The
GRU generator (ASMG.md §3) runs one small GRU per coordinate *group*: one per
MLP scalar, one per embedding column shared across the rows of that column.
All groups of one parameter tensor advance together as batched tensor ops;
there is no Python loop over coordinates.

Shapes: a parameter tensor is viewed as ``[rows, cols]`` (an embedding table
as itself, an MLP tensor as one row). A GRU group per column owns weights of
shape ``[cols, ...]``; rows share them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from trainer.model import EMBEDDING_TABLES

Readout = Literal["plain", "residual"]


def as_rows(name: str, value: Tensor) -> Tensor:
    """View a parameter as ``[rows, cols]``: embedding tables keep their rows."""
    return value if name in EMBEDDING_TABLES else value.reshape(1, -1)


def module_key(name: str) -> str:
    """A parameter name as a ModuleDict / ParameterDict key (no dots)."""
    return name.replace(".", "__")


def _uniform(shape: tuple[int, ...], bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class CoordinateGRU(nn.Module):
    """One GRU (hidden size ``d``) per coordinate group, with a linear read-out.

    ``readout="plain"`` is the paper's ``θ* = w·h + b``; ``"residual"`` is
    ``θ* = θ_last + w·h + b`` with ``w = b = 0`` at start, so an untrained
    generator returns the newest model it was given.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        hidden: int = 4,
        readout: Readout = "plain",
        gate_bias: bool = False,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.readout = readout
        self.names = list(shapes)
        self.cols = {n: int(as_rows(n, torch.empty(s, device="meta")).shape[1]) for n, s in shapes.items()}
        d = hidden
        gate_bound = math.sqrt(6.0 / (2 * d + 1))  # Glorot on the [d+1, d] map from [h, θ]
        out_bound = math.sqrt(6.0 / (d + 2))  # Glorot on the [d+1, 1] read-out
        self.hidden_rz = nn.ParameterDict()  # [c, d, 2d]: h → (r, z)
        self.hidden_h = nn.ParameterDict()  # [c, d, d]: r⊙h → ĥ
        self.input_w = nn.ParameterDict()  # [c, 3d]: θ → (r, z, ĥ)
        self.gate_b = nn.ParameterDict()  # [c, 3d]
        self.out_w = nn.ParameterDict()  # [c, d]
        self.out_b = nn.ParameterDict()  # [c]
        for name, c in self.cols.items():
            k = module_key(name)
            self.hidden_rz[k] = _uniform((c, d, 2 * d), gate_bound)
            self.hidden_h[k] = _uniform((c, d, d), gate_bound)
            self.input_w[k] = _uniform((c, 3 * d), gate_bound)
            if gate_bias:
                self.gate_b[k] = nn.Parameter(torch.zeros(c, 3 * d))
            if readout == "plain":
                self.out_w[k] = _uniform((c, d), out_bound)
                self.out_b[k] = _uniform((c,), out_bound)
            else:
                self.out_w[k] = nn.Parameter(torch.zeros(c, d))
                self.out_b[k] = nn.Parameter(torch.zeros(c))

    def zero_state(self, name: str, rows: int) -> Tensor:
        return torch.zeros(rows, self.cols[name], self.hidden)

    def step(self, name: str, x: Tensor, h: Tensor) -> Tensor:
        """One GRU step for every coordinate: ``x [R, c]``, ``h [R, c, d]``."""
        k, d = module_key(name), self.hidden
        gates_in = x.unsqueeze(-1) * self.input_w[k]  # [R, c, 3d]
        if k in self.gate_b:
            gates_in = gates_in + self.gate_b[k]
        # batched over columns: [c, R, d] @ [c, d, 2d]
        rz = torch.sigmoid(torch.bmm(h.transpose(0, 1), self.hidden_rz[k]).transpose(0, 1) + gates_in[..., : 2 * d])
        r, z = rz[..., :d], rz[..., d:]
        candidate = torch.tanh(
            torch.bmm((r * h).transpose(0, 1), self.hidden_h[k]).transpose(0, 1) + gates_in[..., 2 * d :]
        )
        return (1 - z) * h + z * candidate

    def read(self, name: str, h: Tensor, last: Tensor, scale: float = 1.0) -> Tensor:
        k = module_key(name)
        out = scale * ((h * self.out_w[k]).sum(-1) + self.out_b[k])
        return last + out if self.readout == "residual" else out

    def run(self, name: str, inputs: Sequence[Tensor], h0: Tensor, scale: float = 1.0) -> tuple[list[Tensor], Tensor]:
        """Feed a window of ``[R, c]`` versions; return every step's generated
        version and the hidden state after the *first* step (the next window's
        initial state, since windows slide by one).

        The GRU sees ``θ / scale`` and its read-out is multiplied by ``scale``,
        so a ``scale`` near the parameter's magnitude gives it inputs of order one.
        """
        h, outputs, first = h0, [], h0
        for i, x in enumerate(inputs):
            h = self.step(name, x / scale, h)
            if i == 0:
                first = h
            outputs.append(self.read(name, h, x, scale))
        return outputs, first


class LinearCombiner(nn.Module):
    """ASMG-Linear: ``θ* = Σ_i α_i θ_i`` with one learnable weight per window
    position and parameter tensor, starting as the plain average."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], window: int) -> None:
        super().__init__()
        self.alpha = nn.ParameterDict(
            {module_key(n): nn.Parameter(torch.full((window,), 1.0 / window)) for n in shapes}
        )

    def combine(self, name: str, inputs: Sequence[Tensor]) -> Tensor:
        alpha = self.alpha[module_key(name)]
        return sum((a * x for a, x in zip(alpha, inputs, strict=True)), torch.zeros_like(inputs[0]))
