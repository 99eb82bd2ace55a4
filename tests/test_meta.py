from __future__ import annotations

import math

import pytest
import torch

from trainer.learning import native
from trainer.learning.meta import CoordinateGRU, LinearCombiner


@pytest.fixture(autouse=True, params=["native", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test of the GRU runs on both backends: the C kernels and torch."""
    if request.param == "native":
        assert native.library() is not None, "the C kernels did not build (is a C compiler installed?)"
    else:
        monkeypatch.setattr(native, "library", lambda: None)
    return str(request.param)


def paper_gru_step(w_r: torch.Tensor, w_z: torch.Tensor, w_h: torch.Tensor, h: torch.Tensor, x: float) -> torch.Tensor:
    """docs/method.md §3 for one coordinate, written literally: W [d, d+1] acts on [h, θ]."""
    hx = torch.cat([h, torch.tensor([x])])
    r = torch.sigmoid(w_r @ hx)
    z = torch.sigmoid(w_z @ hx)
    candidate = torch.tanh(w_h @ torch.cat([r * h, torch.tensor([x])]))
    return (1 - z) * h + z * candidate


def test_vectorised_step_matches_the_equations_for_every_coordinate() -> None:
    d = 3
    gru = CoordinateGRU({"item_emb": (5, 4), "mlp.0.weight": (2, 3)}, hidden=d)
    for name, rows, cols in (("item_emb", 5, 4), ("mlp.0.weight", 1, 6)):
        w = gru.weights(name)
        x = torch.randn(rows, cols)
        h = torch.randn(rows, cols, d)
        got = gru.step(name, x, h)
        for i in range(rows):
            for c in range(cols):
                u_rz, u_h, w_in = w.hidden_rz[c], w.hidden_h[c], w.input[c]
                w_r = torch.cat([u_rz[:, :d].T, w_in[:d, None]], dim=1)
                w_z = torch.cat([u_rz[:, d:].T, w_in[d : 2 * d, None]], dim=1)
                w_h = torch.cat([u_h.T, w_in[2 * d :, None]], dim=1)
                expected = paper_gru_step(w_r, w_z, w_h, h[i, c], float(x[i, c]))
                torch.testing.assert_close(got[i, c], expected)


def test_plain_readout_is_linear_in_h_and_residual_adds_the_last_version() -> None:
    plain = CoordinateGRU({"user_emb": (4, 2)}, hidden=2, readout="plain")
    residual = CoordinateGRU({"user_emb": (4, 2)}, hidden=2, readout="residual")
    h, last = torch.randn(4, 2, 2), torch.randn(4, 2)
    expected = (h * plain.out_w).sum(-1) + plain.out_b
    torch.testing.assert_close(plain.read("user_emb", h, last), expected)
    # an untrained residual generator hands back the newest version untouched
    torch.testing.assert_close(residual.read("user_emb", h, last), last)


def test_embedding_meta_parameters_do_not_grow_with_the_number_of_ids() -> None:
    def count(shapes: dict[str, tuple[int, ...]]) -> int:
        return sum(p.numel() for p in CoordinateGRU(shapes, hidden=4).parameters())

    per_group = 4 * 8 + 4 * 4 + 3 * 4 + 4 + 1  # h→(r,z), r⊙h→ĥ, θ→gates, read-out w and b
    assert count({"item_emb": (10, 8)}) == count({"item_emb": (100_000, 8)}) == 8 * per_group
    # one GRU per MLP scalar
    assert count({"mlp.0.weight": (20, 40)}) == 800 * per_group


def test_run_returns_each_steps_output() -> None:
    gru = CoordinateGRU({"cat_emb": (3, 2)}, hidden=2)
    xs = [torch.randn(3, 2) for _ in range(3)]
    h0 = torch.randn(3, 2, 2)
    outputs = gru.run("cat_emb", xs, h0)
    assert len(outputs) == 3
    h = h0
    for x, out in zip(xs, outputs, strict=True):
        h = gru.step("cat_emb", x, h)
        torch.testing.assert_close(out, gru.read("cat_emb", h, x))


def test_linear_combiner_starts_as_the_average() -> None:
    lin = LinearCombiner({"user_emb": (3, 2)}, window=3)
    xs = [torch.randn(3, 2) for _ in range(3)]
    torch.testing.assert_close(lin.combine("user_emb", xs), sum(xs) / 3)


def test_tensors_run_side_by_side_as_they_run_alone() -> None:
    shapes = {"mlp.0.weight": (3, 2), "mlp.0.bias": (3,)}
    gru = CoordinateGRU(shapes, hidden=2, readout="residual", gate_bias=True)
    with torch.no_grad():
        for p in gru.parameters():
            p.add_(torch.randn_like(p))  # the residual read-out starts at zero; make every term count
    lin = LinearCombiner(shapes, window=3)
    with torch.no_grad():
        lin.alpha["mlp__0__bias"].copy_(torch.tensor([0.1, 0.2, 0.3]))
    xs = {n: [torch.randn(1, math.prod(s)) for _ in range(3)] for n, s in shapes.items()}
    h0 = {n: torch.randn(1, math.prod(s), 2) for n, s in shapes.items()}
    scales = {"mlp.0.weight": 2.0, "mlp.0.bias": 0.5}
    names = list(shapes)
    joint_scale = torch.tensor([2.0] * 6 + [0.5] * 3)
    joint = gru.run(
        names,
        [torch.cat([xs[n][i] for n in names], 1) for i in range(3)],
        torch.cat([h0[n] for n in names], 1),
        joint_scale,
    )
    first = gru.step(names, torch.cat([xs[n][0] for n in names], 1), torch.cat([h0[n] for n in names], 1))
    combined = lin.combine(names, [torch.cat([xs[n][i] for n in names], 1) for i in range(3)])
    for n, part, part_first, part_lin in zip(
        names, joint[2].split([6, 3], 1), first.split([6, 3], 1), combined.split([6, 3], 1), strict=True
    ):
        torch.testing.assert_close(part, gru.run(n, xs[n], h0[n], scales[n])[2])
        torch.testing.assert_close(part_first, gru.step(n, xs[n][0], h0[n]))
        torch.testing.assert_close(part_lin, lin.combine(n, xs[n]))


def reference_run(
    gru: CoordinateGRU, name: str, xs: list[torch.Tensor], h0: torch.Tensor, scale: torch.Tensor
) -> list[torch.Tensor]:
    """docs/method.md §3 with plain autograd ops, one GRU per column, no hand-written backward."""
    w, d = gru.weights(name), gru.hidden
    u_rz, u_h, w_in = w.hidden_rz, w.hidden_h, w.input
    bias = w.gate_bias if w.gate_bias is not None else torch.zeros_like(w_in)
    h, outputs = h0, []
    for x in xs:
        gates = (x / scale).unsqueeze(-1) * w_in + bias  # [R, c, 3d]
        rz = torch.sigmoid(gates[..., : 2 * d] + torch.einsum("rci,cij->rcj", h, u_rz))
        candidate = torch.tanh(gates[..., 2 * d :] + torch.einsum("rci,cij->rcj", rz[..., :d] * h, u_h))
        h = (1 - rz[..., d:]) * h + rz[..., d:] * candidate
        out = ((h * w.out_w).sum(-1) + w.out_b) * scale
        outputs.append(x + out if gru.readout == "residual" else out)
    return outputs


@pytest.mark.parametrize("rows, cols", [(7, 4), (1, 6), (5, 3), (9, 8)])
@pytest.mark.parametrize("gate_bias, readout", [(False, "plain"), (True, "residual")])
def test_window_values_and_gradients_match_plain_autograd(rows: int, cols: int, gate_bias: bool, readout: str) -> None:
    """The hand-written backward pass gives every gradient autograd gives, for
    one column per group (a single row) and for several (block-diagonal)."""
    torch.manual_seed(rows * cols)
    gru = CoordinateGRU({"item_emb": (rows, cols)}, hidden=3, readout=readout, gate_bias=gate_bias)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in gru.parameters():
            p.add_(torch.randn_like(p))  # the residual read-out starts at zero; make every term count
    xs = [torch.randn(rows, cols, requires_grad=True) for _ in range(3)]
    h0 = torch.randn(rows, cols, 3, requires_grad=True)
    scale, weights = torch.rand(cols) + 0.5, [torch.randn(rows, cols) for _ in range(3)]
    leaves = [*gru.parameters(), *xs, h0]
    results = []
    for outputs in (gru.run("item_emb", xs, h0, scale), reference_run(gru, "item_emb", xs, h0, scale)):
        loss = sum((out * w).sum() for out, w in zip(outputs, weights, strict=True))
        results.append(([out.detach() for out in outputs], torch.autograd.grad(loss, leaves)))
    (got, got_grads), (expected, expected_grads) = results
    for a, b in zip([*got, *got_grads], [*expected, *expected_grads], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_tiled_table_runs_in_a_row_as_it_runs_alone() -> None:
    """A small table's rows, laid end to end in the MLP's row (each column of
    each row with its column's GRU), give the values and gradients of the table
    run on its own."""
    shapes = {"cat_emb": (4, 3), "mlp.0.bias": (5,)}
    gru = CoordinateGRU(shapes, hidden=2, readout="residual", gate_bias=True)
    with torch.no_grad():
        for p in gru.parameters():
            p.add_(torch.randn_like(p))
    table = [torch.randn(4, 3) for _ in range(3)]
    bias = [torch.randn(1, 5) for _ in range(3)]
    h_table, h_bias = torch.randn(4, 3, 2), torch.randn(1, 5, 2)
    weights = [torch.randn(4, 3) for _ in range(3)]
    params = list(gru.parameters())
    row = gru.run(
        ["mlp.0.bias", "cat_emb"],
        [torch.cat([b, t.reshape(1, -1)], 1) for b, t in zip(bias, table, strict=True)],
        torch.cat([h_bias, h_table.reshape(1, -1, 2)], 1),
        tiled={"cat_emb": 4},
    )
    in_row = [out[:, 5:].reshape(4, 3) for out in row]
    alone = gru.run("cat_emb", table, h_table)
    for a, b in zip(in_row, alone, strict=True):
        torch.testing.assert_close(a, b)
    grads = [
        torch.autograd.grad(
            sum((out * w).sum() for out, w in zip(outs, weights, strict=True)), params, allow_unused=True
        )
        for outs in (in_row, alone)
    ]
    for a, b in zip(*grads, strict=True):
        if a is None or b is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(row[2][:, :5], gru.run("mlp.0.bias", bias, h_bias)[2])


@pytest.mark.parametrize("rows", [(7, 30), (30, 7), (5, 5), (1, 40), (12, 12, 31)])
def test_tables_run_together_as_they_run_alone(rows: tuple[int, ...]) -> None:
    """Tables of one column count, cut into chunks of one size (the last
    padded) and run in one window, give each table's values and gradients."""
    shapes = {name: (r, 4) for name, r in zip(("user_emb", "item_emb", "cat_emb"), rows, strict=False)}
    gru = CoordinateGRU(shapes, hidden=2, readout="residual", gate_bias=True)
    with torch.no_grad():
        for p in gru.parameters():
            p.add_(torch.randn_like(p))
    names = list(shapes)
    xs = [torch.randn(3, r, 4) for r in rows]
    h0s = [torch.randn(r, 4, 2) for r in rows]
    scales = [1.0, torch.rand(4) + 0.5, 2.0][: len(rows)]
    weights = [torch.randn(3, r, 4) for r in rows]
    together = gru.run_tables(names, xs, h0s, scales)
    alone = [gru.run(n, x, h, s) for n, x, h, s in zip(names, xs, h0s, scales, strict=True)]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b)
    params = list(gru.parameters())
    grads = [
        torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights, strict=True)), params)
        for outs in (together, alone)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    # one step, as the state carry takes it
    stepped = gru.step_tables(names, [x[0] for x in xs], h0s)
    for name, x, h, got in zip(names, xs, h0s, stepped, strict=True):
        torch.testing.assert_close(got, gru.step(name, x[0], h))
