#!/usr/bin/env bash
# Set up a virtual environment (if missing) and run lint, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# torch is pinned to the CPU build (the wheel a plain `torch` would replace with a CUDA one)
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/ruff check trainer tests benchmarks
.venv/bin/ruff format --check trainer tests benchmarks
.venv/bin/mypy
set +e
.venv/bin/pytest -q "$@"
status=$?
set -e
# pytest exits 5 when it collects no tests: that is a failure of this suite, not a pass
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$status"
