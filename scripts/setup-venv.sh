#!/usr/bin/env bash
# Creates a virtualenv from Debian's python3 with --system-site-packages (so it imports bcc
# from python3-bpfcc, which PyPI does not have) and installs diskguard into it, with the
# versions pinned in scripts/constraints.txt (the same ones CI tests and the image ships).
# Usage: scripts/setup-venv.sh [runtime|demo|dev]
#   runtime: `pip install .` (a real, non-editable install) with runtime dependencies only:
#            exactly what the image and a node get.
#   demo:    runtime + the `demo` extra (the bundled fake API server's dependencies).
#   dev:     an editable install with the `test` extra (tests, linters, benchmarks), and
#            `npm ci` in tests/deploy/operator-schema (the Prometheus Operator's schemas,
#            pinned by its package-lock.json; npm from scripts/install-system-deps.sh dev).
# The venv is $DISKGUARD_VENV, default .venv in the checkout.
set -euo pipefail
kind="${1:-dev}"
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${DISKGUARD_VENV:-$here/.venv}"
case "$kind" in
  runtime) target=("$here") ;;
  demo) target=("$here[demo]") ;;
  dev) target=(-e "$here[test]") ;;
  *) echo "usage: $0 [runtime|demo|dev]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-venv: creating $venv (Debian's python3, system site-packages for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
echo "setup-venv: installing diskguard ($kind) into $venv"
# pip's own output (one line per package) is the progress; no progress bars in CI logs.
# PIP_CONSTRAINT (unlike -c) also reaches the isolated environment pip builds diskguard in,
# so the build backend (setuptools, wheel) is pinned too.
PIP_CONSTRAINT="$here/scripts/constraints.txt" "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
  -c "$here/scripts/constraints.txt" "${target[@]}"
if [ "$kind" = dev ]; then
  command -v npm >/dev/null || { echo "setup-venv: no npm: run scripts/install-system-deps.sh dev" >&2; exit 1; }
  echo "setup-venv: installing tests/deploy/operator-schema (npm ci)"
  npm ci --prefix "$here/tests/deploy/operator-schema" --no-audit --no-fund --loglevel=error
fi
