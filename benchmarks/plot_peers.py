"""Throughput and p99 against concurrency, per server, from a peers.json of the shared harness.

python benchmarks/plot_peers.py results/serve-vs-peers/peers-*.json --out docs/figures/serve-vs-peers.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> int:
    parser = argparse.ArgumentParser(description="plot a peers.json: items/s and p99 against concurrency")
    parser.add_argument("peers_json", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads(args.peers_json.read_text())["results"]
    by_peer: dict[str, list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        by_peer[row["peer"]].append(row)
    figure, (rate, tail) = plt.subplots(1, 2, figsize=(10, 4))
    for peer, points in by_peer.items():
        points.sort(key=lambda r: r["concurrency"])
        levels = [r["concurrency"] for r in points]
        style = {"linewidth": 2.5} if peer == "asmg" else {"linestyle": "--"}
        rate.plot(levels, [r["items_per_s"] for r in points], marker="o", label=peer, **style)
        tail.plot(levels, [r["p99_ms"] for r in points], marker="o", label=peer, **style)
    for axis, label in ((rate, "scored items/s"), (tail, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({r["concurrency"] for r in rows}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("concurrent connections (wrk)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    tail.set_yscale("log")
    rate.legend()
    figure.suptitle(f"/v1/predict against the peers ({args.peers_json.name})")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
