#!/usr/bin/env bash
# The README's first command as a new user meets it: the wheel, installed without extras into a
# fresh virtual environment, run from outside the checkout, with an empty cache. A runtime import
# that only the dev extra installs, or package data the wheel lacks (the GRU's C source, the Lua
# scripts, the shipped data set), fails here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/asmg-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
# built from a copy: setuptools leaves a build/ folder beside the sources it builds
mkdir "$work/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/app" "$root/trainer" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$work/dist" "$work/src"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$work"/dist/*.whl
cd "$work"
export XDG_CACHE_HOME="$work/cache"  # the GRU kernels are built from the installed source, not a cached build
"$work/venv/bin/asmg" demo --periods 5
ls "$XDG_CACHE_HOME"/asmg/native/gru-*.so >/dev/null
# the Redis store's Lua scripts are package data too (the demo's store is SQLite)
"$work/venv/bin/python" -c "from trainer.core.store.redis_store import _script; _script('append'); _script('commit')"
"$work/venv/bin/python" -c "from app.status_page import status_routes; status_routes()"  # and the status page
# the research commands say which extra they need, and run once it is installed
if "$work/venv/bin/asmg" pretrain --dataset ml-latest-small --out "$work/theta0.pt" 2>"$work/err"; then
  echo "check_install: pretrain ran without the research extra" >&2; exit 1
fi
grep -q "asmg-serve\[research\]" "$work/err" || { cat "$work/err" >&2; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$wheel[research]"
"$work/venv/bin/asmg" pretrain --dataset ml-latest-small --epochs 1 --out "$work/theta0.pt"
echo "check_install: the wheel runs the demo without extras, and the research commands with [research], from $work"
