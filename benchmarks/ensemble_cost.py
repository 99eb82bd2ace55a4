"""What serving a two-model ensemble costs: the scoring forward pass of one model
against the logits of two averaged (the ``+ens`` replay policy served).

The served path's own function (``request_logits``) on the default model,
requests of 30 history items and ``--candidates`` candidates each, three
categories per item, with one torch thread as a server worker runs. The two variants alternate within every
round and the figure is the median over rounds, so drift on a noisy machine
hits both alike. Printed per batch size: microseconds per call for one model
and for the ensemble, and their ratio.

    python benchmarks/ensemble_cost.py --rounds 7
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from trainer.core.config import ModelConfig
from trainer.core.model import Params, request_logits, seeded_model

# users, history items, history categories, candidates, their categories, each candidate's request
Requests = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def requests(config: ModelConfig, count: int, candidates: int, seed: int) -> Requests:
    g = torch.Generator().manual_seed(seed)
    history = config.history_length
    cats = 3
    return (
        torch.randint(config.user_buckets, (count,), generator=g),
        torch.randint(config.item_buckets, (count, history), generator=g),
        torch.randint(config.category_buckets, (count, history, cats), generator=g),
        torch.randint(config.item_buckets, (count * candidates,), generator=g),
        torch.randint(config.category_buckets, (count * candidates, cats), generator=g),
        torch.arange(count).repeat_interleave(candidates),
    )


@torch.inference_mode()
def serve(models: list[Params], inputs: Requests, layers: int) -> torch.Tensor:
    """Click probabilities of the models' logits averaged (one model: its own)."""
    users, hist_items, hist_cats, items, item_cats, owner = inputs
    per_model = [request_logits(m, users, hist_items, hist_cats, items, item_cats, owner, layers) for m in models]
    return torch.sigmoid(torch.stack(per_model).mean(0))


def timed(call: Callable[[], torch.Tensor], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--batches", default="1,8,64", help="requests per forward pass")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ModelConfig()
    generated: Params = seeded_model(config, 0).params()
    iu: Params = seeded_model(config, 1).params()
    layers = config.n_layers
    print(f"{'requests':>8} {'one model µs':>13} {'ensemble µs':>12} {'ratio':>6}")
    for batch in (int(b) for b in args.batches.split(",")):
        inputs = requests(config, batch, args.candidates, seed=batch)
        calls = max(20, 2000 // batch)

        one = functools.partial(serve, [generated], inputs, layers)
        both = functools.partial(serve, [generated, iu], inputs, layers)
        one(), both()  # warm-up
        singles, pairs = [], []
        for _ in range(args.rounds):
            singles.append(timed(one, calls))
            pairs.append(timed(both, calls))
        single, pair = statistics.median(singles), statistics.median(pairs)
        print(f"{batch:>8} {single:>13.0f} {pair:>12.0f} {pair / single:>5.2f}×", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
