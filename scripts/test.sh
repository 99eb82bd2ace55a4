#!/usr/bin/env bash
# Set up a virtual environment (if missing) and run lint, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# the tests start their own redis-server on a free loopback port, build the GRU kernels
# (trainer/learning/native) with the machine's C compiler, and the alert rules are checked with
# promtool: install Debian's where they are missing
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"  # the alert rules' unit tests
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"  # the load balancer test
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium chromium-driver"  # the status page test
if [ -n "$missing" ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  # shellcheck disable=SC2086
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq $missing >/dev/null
fi
python3 -m venv .venv
# torch is pinned to the CPU build (the wheel a plain `torch` would replace with a CUDA one)
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/ruff check trainer app tests benchmarks
.venv/bin/ruff format --check trainer app tests benchmarks
.venv/bin/mypy
# the architecture's import directions ([tool.importlinter] in pyproject.toml)
.venv/bin/lint-imports
# the Prometheus configuration and its alert rules, with their unit tests
promtool check config deploy/prometheus/prometheus.yml >/dev/null
promtool test rules deploy/prometheus/alerts_test.yml
# the Dockerfile's lint (.hadolint.yaml) and the Kubernetes manifests against the API's schemas
.venv/bin/hadolint Dockerfile
.venv/bin/kubernetes-validate --strict --quiet -k 1.30.0 $(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)
# the compose file against the Compose specification's schema (vendored by check-jsonschema)
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
set +e
.venv/bin/pytest -q "$@"
status=$?
set -e
# pytest exits 5 when it collects no tests: that is a failure of this suite, not a pass
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
# the README's first command from the built wheel, without the dev extra, outside the checkout
bash scripts/check_install.sh
