#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (apt packages, .venv),
# runs the static checks, then the lanes (pytest markers, see tests/conftest.py):
#   host     every pure and kernel test on this machine's cgroup hierarchy (v1 here)
#   install  a fresh clone of HEAD: the README's first command, `pip install .` runtime-only
#   image    the image built from the Dockerfile (of that clone), run like the DaemonSet
#   v2       the kernel tests (not host_only) in a qemu guest booted cgroup-v2-only
# and, between them, the short soak and the core bench's quick figures (not gates).
# Run as root. Lanes alone:
#   DISKGUARD_LANE=host .venv/bin/pytest -m "not install and not image"   host lane
#   .venv/bin/pytest -m install                                            install lane
#   .venv/bin/pytest -m image                                              image lane
#   tests/vm/run-v2-lane.sh -m "kernel and not host_only"                  v2 lane
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
lap() { echo "== $1 done in $((SECONDS - lap_start)) s (total $((SECONDS - started)) s)"; }

lap_start=$SECONDS
bash scripts/install-system-deps.sh dev
bash scripts/setup-venv.sh dev
lap "setup"

echo "== static checks"
lap_start=$SECONDS
.venv/bin/ruff check diskguard tests bench
.venv/bin/ruff format --check diskguard tests bench
.venv/bin/mypy
# Declared dependencies equal imported ones (runtime vs test extra).
.venv/bin/deptry .
# Again with the `demo` extra treated as non-runtime: the agent itself (everything but the
# bundled fakes and the demo command) must run on the runtime dependencies alone.
.venv/bin/deptry . -ee tests -ee bench -ee build -ee scripts \
  -ee 'diskguard/testing' -ee 'diskguard/tools/demo\.py' -oddg test,demo
# The floors and "product code never imports testing" (pyproject.toml [tool.importlinter]).
.venv/bin/lint-imports
lap "static checks"

echo "== host lane"
lap_start=$SECONDS
DISKGUARD_LANE=host .venv/bin/pytest -m "not install and not image"
lap "host lane"

echo "== install and image lanes (a fresh clone of HEAD: the README's first command, a"
echo "   runtime-only install, the image built from its Dockerfile and run like the DaemonSet)"
lap_start=$SECONDS
# One session: both lanes share the clone. The image lane starts dockerd if none runs and
# stops it afterwards; the base image is cached in /var/cache/diskguard-image.
.venv/bin/pytest -m "install or image" --durations=5
lap "install and image lanes"

echo "== soak (short; the full one: .venv/bin/python bench/soak.py)"
lap_start=$SECONDS
.venv/bin/python bench/soak.py --quick
lap "soak"

echo "== core bench (quick; figures, not a gate: bench/README.md)"
lap_start=$SECONDS
.venv/bin/python bench/core_bench.py --quick
lap "core bench"

echo "== cgroup v2 lane (qemu)"
# The pure tests do not depend on the kernel; the guest runs every kernel test that means
# something under emulation.
lap_start=$SECONDS
# Under emulation the lane takes about 25 minutes on an idle 2-core machine (more beside
# other jobs): the guest's timeout leaves room, inside CI's 90-minute budget.
bash tests/vm/run-v2-lane.sh --vm-timeout 3000 -m "kernel and not host_only"
lap "v2 lane"
