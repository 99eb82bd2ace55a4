#!/usr/bin/env bash
# /v1/predict of this checkout against another git revision of it, in one run of the
# peer harness (see serve_vs_peers.sh): the same model sizes, bodies and wrk load,
# the two servers measured in alternating order, medians over the rounds.
#
#   benchmarks/serve_ab.sh REV                       # e.g. the commit before a change
#   benchmarks/serve_ab.sh REV --rounds 3 --conc "1 32"
#
# REV is checked out into a temporary git worktree and served by this checkout's
# .venv with REV's code first on the path. Options go to run_peers.sh (default
# --rounds 3). Environment: ASMG_BENCH_DIR, ASMG_BENCH_WORKERS (serving processes,
# default 2), as for serve_vs_peers.sh.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 REV [run_peers.sh options]" >&2; exit 2; }
rev=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
git -C "$root" rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "serve_ab: unknown revision $rev" >&2; exit 2; }
work=$(mktemp -d /tmp/asmg-ab.XXXXXX)
source "$root/benchmarks/peer_setup.sh"
git -C "$root" worktree add --detach --quiet "$work/old" "$rev"
trap 'git -C "$root" worktree remove --force "$work/old"' EXIT

settings="$bench_settings ASMG_WORKERS=${ASMG_BENCH_WORKERS:-2}"
old="cd $work/old && exec env $settings ASMG_STATE_DIR=$work/state-old ASMG_PORT=8001 PYTHONPATH=$work/old"
old+=" $python -m app.cli serve"
new="cd $root && exec env $settings ASMG_STATE_DIR=$work/state-new ASMG_PORT=8002 $python -m app.cli serve"

cd "$bench"
./run_peers.sh --only before,after --rounds 3 \
  --add before http://127.0.0.1:8001/v1/predict "$old" --bodies before "$work/bodies.jsonl" \
  --add after http://127.0.0.1:8002/v1/predict "$new" --bodies after "$work/bodies.jsonl" \
  "$@"
# the harness writes beside itself, or where it copied itself when its folder is read-only
if [[ -w $bench ]]; then echo "peers.json: $bench/results/peers.json"
else echo "peers.json: ${BENCH_WORK:-$HOME/.cache/ctr-peer-bench}/results/peers.json"; fi
