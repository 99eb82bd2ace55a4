"""The meta generator's GRU window in C (trainer/learning/native) against the same
window in torch, forward and backward, on the shapes of an ml-100k meta batch:
the user and item tables (135 and 1,100 rows of 8 columns) run together, and
the MLP's row (1,185 coordinates, each with its own GRU); k = 3 steps, d = 4,
one thread. Both backends alternate in one process; min and median of the
repeats.

    python benchmarks/gru_kernels.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from trainer.learning import native
from trainer.learning.meta import CoordinateGRU


def timed(run: Callable[[], None], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description="GRU window: C kernels vs torch")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    if native.library() is None:
        print("the C kernels did not build here (no C compiler?)", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    torch.manual_seed(0)
    steps, hidden, users, items, coordinates = 3, 4, 135, 1100, 1185
    shapes = {"user_emb": (65536, 8), "item_emb": (65536, 8), "mlp": (coordinates,)}
    grus = {kernels: CoordinateGRU(shapes, hidden, "residual", True, kernels) for kernels in (True, False)}
    grus[False].load_state_dict(grus[True].state_dict())
    tables = ["user_emb", "item_emb"]
    xs = [torch.randn(steps, rows, 8) * 0.1 for rows in (users, items)]
    hs = [torch.randn(rows, 8, hidden) * 0.1 for rows in (users, items)]
    row_x, row_h = torch.randn(steps, 1, coordinates) * 0.1, torch.randn(1, coordinates, hidden) * 0.1

    def tables_step(gru: CoordinateGRU) -> None:
        outs = gru.run_tables(tables, xs, hs, [1.0, 1.0])
        sum(out.sum() for out in outs).backward()  # type: ignore[union-attr]

    def row_step(gru: CoordinateGRU) -> None:
        gru.run("mlp", row_x, row_h).sum().backward()

    print("| window | torch ms (min / median) | C ms (min / median) | torch / C (median) |")
    print("| --- | --- | --- | --- |")
    for label, step in (
        (f"tables {users} + {items} rows × 8 columns, forward + backward", tables_step),
        (f"MLP row, {coordinates} coordinates, forward + backward", row_step),
    ):
        for gru in grus.values():  # warm up: the first calls allocate and build
            step(gru)
        results: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats // 20):
            for kernels, gru in grus.items():
                results[kernels] += timed(lambda gru=gru, step=step: step(gru), 20)  # type: ignore[misc]
        eager, fused = results[False], results[True]
        print(
            f"| {label} | {min(eager) * 1e3:.3f} / {statistics.median(eager) * 1e3:.3f} "
            f"| {min(fused) * 1e3:.3f} / {statistics.median(fused) * 1e3:.3f} "
            f"| {statistics.median(eager) / statistics.median(fused):.1f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
