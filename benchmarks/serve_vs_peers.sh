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
bench=$(cd "${ASMG_BENCH_DIR:-$root/../shared/bench}" && pwd)
python=$root/.venv/bin/python
[[ -x $python ]] || { echo "serve_vs_peers: $python missing; run the README's setup first" >&2; exit 2; }
work=$(mktemp -d /tmp/asmg-vs-peers.XXXXXX)

# The harness's bodies are seeded, so these are the ones it sends the peers.
[[ -s $bench/model.pt ]] || (cd "$bench" && "$python" model.py >/dev/null)
"$python" "$bench/tools.py" gen "$work/data" >/dev/null
"$python" "$bench/tools.py" convert "$work/data/bodies.jsonl" "$work/bodies.jsonl" >/dev/null

# The benchmark model: 16-wide embeddings, MLP 200 -> 80 -> 1, 50k users and
# items, 1k categories, 30 history items. No trainer: serving only.
settings="ASMG_STATE_DIR=$work/state ASMG_EMBEDDING_DIM=16 ASMG_USER_BUCKETS=50000 ASMG_ITEM_BUCKETS=50000"
settings+=" ASMG_CATEGORY_BUCKETS=1000 ASMG_HISTORY_LENGTH=30 ASMG_HIDDEN=200,80 ASMG_TRAINER_IN_PROCESS=false"
settings+=" ASMG_PORT=8000 ASMG_WORKERS=${ASMG_BENCH_WORKERS:-1} ${ASMG_BENCH_ENV:-}"

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
