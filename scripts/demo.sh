#!/usr/bin/env bash
# The agent's main job on one machine, no cluster: installs what it needs, then runs
# `diskguard demo` (loop-device data disk, bundled fake API server, a demo pod whose
# container is a real cgroup running fio). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh demo
bash scripts/setup-venv.sh demo
exec "${DISKGUARD_VENV:-.venv}/bin/diskguard" demo "$@"
