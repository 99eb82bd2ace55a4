#!/usr/bin/env bash
# Our /v1/predict measured beside the shared peers (TorchServe, BentoML, plain
# FastAPI) in one run of the shared harness: the benchmark model's sizes, the
# harness's own users, histories and items (converted to our schema, history
# supplied by the client), the same wrk load. Prints the harness's table, plots
# items/s and p99 against concurrency, and prints the path of the peers.json last.
#
#   benchmarks/serve_vs_peers.sh                          # every peer and us
#   benchmarks/serve_vs_peers.sh --only torchserve,asmg --duration 10
#
# Options go to run_peers.sh. Environment: ASMG_BENCH_DIR (the harness,
# default ../shared/bench), ASMG_BENCH_WORKERS (serving processes, default 1),
# ASMG_BENCH_ENV (more ASMG_* settings for our server, space-separated).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/asmg-vs-peers.XXXXXX)
source "$root/benchmarks/peer_setup.sh"
settings="$bench_settings ASMG_STATE_DIR=$work/state ASMG_PORT=8000 ASMG_WORKERS=${ASMG_BENCH_WORKERS:-1}"
settings+=" ${ASMG_BENCH_ENV:-}"

cd "$bench"
./run_peers.sh \
  --add asmg http://127.0.0.1:8000/v1/predict "cd $root && exec env $settings .venv/bin/asmg serve" \
  --bodies asmg "$work/bodies.jsonl" \
  "$@"
mkdir -p "$root/results/serve-vs-peers"
saved=$root/results/serve-vs-peers/peers-$(date -u +%Y%m%dT%H%M%SZ).json
cp "$bench/results/peers.json" "$saved"
"$python" "$root/benchmarks/plot_peers.py" "$saved" --out "${saved%.json}.png"
echo "peers.json: $saved"
