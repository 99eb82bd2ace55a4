# Sourced by serve_vs_peers.sh and serve_ab.sh. Finds the peer harness (ASMG_BENCH_DIR,
# default ../shared/bench), writes its seeded request bodies in this service's schema to
# $work/bodies.jsonl (the harness sends the peers the same users, histories and items),
# and sets bench_settings: the benchmark model's sizes (16-wide embeddings, MLP
# 200 -> 80 -> 1, 50k users and items, 1k categories, 30 history items), no trainer.
# Needs: root (the checkout), work (a scratch folder). Sets: bench, python, bench_settings.
bench=$(cd "${ASMG_BENCH_DIR:-$root/../shared/bench}" && pwd)
python=$root/.venv/bin/python
[[ -x $python ]] || { echo "$0: $python missing; run the README's setup first" >&2; exit 2; }
[[ -s $bench/model.pt ]] || (cd "$bench" && "$python" model.py >/dev/null)
"$python" "$bench/tools.py" gen "$work/data" >/dev/null
"$python" "$bench/tools.py" convert "$work/data/bodies.jsonl" "$work/bodies.jsonl" >/dev/null
bench_settings="ASMG_EMBEDDING_DIM=16 ASMG_USER_BUCKETS=50000 ASMG_ITEM_BUCKETS=50000 ASMG_CATEGORY_BUCKETS=1000"
bench_settings+=" ASMG_HISTORY_LENGTH=30 ASMG_HIDDEN=200,80 ASMG_TRAINER_IN_PROCESS=false"
