"""Delta against full snapshot: bytes moved, swap time on a replica, the trainer's cost.

A synthetic model with a 10M-row item table (and a 1M-row user table,
embedding size 8: a full snapshot of about 350 MB, under Redis's default 512 MB
value limit) is published as version 1 on a redis-server of the benchmark's
own (no persistence). For each share of rows a period changes, every table
has that share of its rows (drawn at random) and every dense tensor changed,
and the same model is published once as a delta on version 1 and once as a
full snapshot; the two alternate, the first of each round switching, for
``--rounds`` rounds.

Measured per version: the blob's size; the trainer's cost of making it
(:func:`trainer.core.registry.publication`: finding the changed rows, hashing,
serialising); and a replica's swap to it from version 1, as the swap watcher
does it (:func:`trainer.core.registry.resolve_version` with the served model:
fetch from Redis, checksums, apply or unpickle, verify), split into the fetch
and the rest. Medians over the rounds.

    python benchmarks/delta_publish.py --shares 0.001,0.01,0.1 --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import start_redis

from trainer.core.config import ModelConfig
from trainer.core.delta import tensor_digests
from trainer.core.model import Params, seeded_model
from trainer.core.registry import Loaded, Published, publication, resolve_version
from trainer.core.store import RedisStore


def changed(params: Params, share: float, seed: int) -> Params:
    """``params`` with ``share`` of each table's rows and every dense tensor changed."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in params.items():
        if name.endswith("_emb"):
            rows = torch.randperm(len(value), generator=gen)[: max(1, int(share * len(value)))]
            out[name] = value.clone().index_add_(0, rows, torch.randn(len(rows), value.shape[1], generator=gen))
        else:
            out[name] = value + 0.01 * torch.randn(value.shape, generator=gen)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--item-buckets", type=int, default=10_000_000)
    parser.add_argument("--user-buckets", type=int, default=1_000_000)
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--shares", default="0.001,0.01,0.1")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    torch.set_num_threads(1)
    config = ModelConfig(
        embedding_dim=args.embedding_dim, user_buckets=args.user_buckets, item_buckets=args.item_buckets
    )
    base = seeded_model(config, 0).params()
    with tempfile.TemporaryDirectory() as directory:
        url, server = start_redis(Path(directory))
        store = RedisStore(url, "bench", timeout=600)
        try:
            first, digests = publication(config, base, 0, "initial")
            info = store.publish_initial(first)
            assert info is not None
            served = Loaded(info, base, digests)
            trainer_base = Published(1, base, tensor_digests(base))
            print(
                f"model: item table {args.item_buckets:,} rows, user table {args.user_buckets:,} rows, "
                f"embedding dim {args.embedding_dim}; full snapshot {len(first.weights) / 1e6:.1f} MB; "
                f"{args.rounds} rounds, alternating"
            )
            print(f"{'share':>6} {'kind':>5} {'blob MB':>9} {'make s':>7} {'swap s':>7} {'fetch s':>8} {'rest s':>7}")
            for share in (float(s) for s in args.shares.split(",")):
                new = changed(base, share, seed=int(share * 1e6))
                figures: dict[str, dict[str, list[float]]] = {"delta": {}, "full": {}}
                for round_ in range(args.rounds):
                    order = ("delta", "full") if round_ % 2 == 0 else ("full", "delta")
                    for kind in order:
                        gc.collect()
                        started = time.perf_counter()
                        version, _ = publication(
                            config,
                            new,
                            store.trained_through() + 1,
                            "iu",
                            base=trainer_base if kind == "delta" else None,
                        )
                        make = time.perf_counter() - started
                        assert (version.base is not None) == (kind == "delta"), "the delta was not worth it"
                        number = store.commit_period(version, b"", keep=1000).version
                        del version
                        gc.collect()
                        started = time.perf_counter()
                        blob = store.weights(number)
                        fetch = time.perf_counter() - started
                        assert blob is not None
                        del blob
                        gc.collect()
                        started = time.perf_counter()
                        loaded = resolve_version(store, number, config, served)
                        swap = time.perf_counter() - started
                        assert loaded.deltas == (1 if kind == "delta" else 0)
                        assert torch.equal(loaded.params["item_emb"], new["item_emb"])
                        size = store.version(number).size  # type: ignore[union-attr]
                        del loaded
                        for name, value in (("size", size), ("make", make), ("swap", swap), ("fetch", fetch)):
                            figures[kind].setdefault(name, []).append(value)
                        store._redis.delete(store._key("model", number, "weights"))  # keep Redis's memory down
                for kind in ("delta", "full"):
                    f = {name: statistics.median(values) for name, values in figures[kind].items()}
                    print(
                        f"{share:>6.1%} {kind:>5} {f['size'] / 1e6:>9.1f} {f['make']:>7.2f} {f['swap']:>7.2f} "
                        f"{f['fetch']:>8.2f} {f['swap'] - f['fetch']:>7.2f}"
                    )
                del new
        finally:
            store.close()
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
