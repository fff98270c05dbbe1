#!/usr/bin/env bash
# Creates .venv from Debian's python3 (which imports bcc from python3-bpfcc) and installs diskguard.
# Usage: scripts/setup-venv.sh [runtime|dev]
set -euo pipefail
kind="${1:-dev}"
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${DISKGUARD_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
extra=""
[ "$kind" = dev ] && extra="[test]"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here$extra"
