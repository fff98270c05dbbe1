#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (apt packages, .venv),
# runs the static checks, the host lane (this kernel's cgroup hierarchy; cgroup v1 on the
# development machines), then the cgroup-v2 lane in a qemu guest (tests/vm/run-v2-lane.sh).
# Run as root. Lanes alone:
#   .venv/bin/pytest                      host lane only
#   tests/vm/run-v2-lane.sh [pytest args] v2 lane only
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-deps.sh dev
bash scripts/setup-venv.sh dev

echo "== static checks"
.venv/bin/ruff check diskguard tests bench
.venv/bin/mypy

echo "== host lane"
DISKGUARD_LANE=host .venv/bin/pytest

echo "== soak (short; the full one: .venv/bin/python bench/soak.py)"
.venv/bin/python bench/soak.py --quick

echo "== cgroup v2 lane (qemu)"
# The pure tests do not depend on the kernel; the guest runs everything that touches it.
v2_paths=()
for p in tests/test_lane.py tests/node tests/agent tests/sampler; do
  [ -e "$p" ] && v2_paths+=("$p")
done
bash tests/vm/run-v2-lane.sh "${v2_paths[@]}"
