#!/usr/bin/env bash
# System packages diskguard needs, shared by .ci/run, the demo and the Dockerfile. Run as root.
# Usage: scripts/install-system-deps.sh [runtime|demo|dev]
#   runtime: what the agent needs on a node (Debian's python3 and BCC).
#   demo:    runtime + what the no-cluster demo uses (fio for real IO, e2fsprogs for its loop
#            disk's filesystem, venv/pip to install diskguard).
#   dev:     demo + what the test lanes need (kernel headers, the qemu v2 lane, prometheus,
#            the image lane's docker and mmdebstrap, node and npm for tests/deploy).
set -euo pipefail
kind="${1:-dev}"
export DEBIAN_FRONTEND=noninteractive

runtime_pkgs=(python3 python3-bpfcc)
demo_pkgs=(python3-venv python3-pip fio e2fsprogs)
# Kernel headers for BCC: the running kernel's own package where Debian has one (a cloud
# kernel, `-cloud-amd64`, needs its own flavour); otherwise the stock amd64 flavour.
headers=linux-headers-amd64
if apt-cache show "linux-headers-$(uname -r)" >/dev/null 2>&1; then
  headers="linux-headers-$(uname -r)"
fi
dev_pkgs=("$headers" bpfcc-tools bpftool qemu-system-x86 busybox-static kmod cpio zstd procps
  prometheus docker.io mmdebstrap)
# node and npm validate deploy/'s Prometheus Operator objects (tests/deploy/operator-schema):
# Debian's, unless an npm is there already (NodeSource's nodejs bundles npm and conflicts
# with Debian's npm package).
if ! command -v npm >/dev/null 2>&1; then
  dev_pkgs+=(nodejs npm)
fi

pkgs=("${runtime_pkgs[@]}")
case "$kind" in
  runtime) ;;
  demo) pkgs+=("${demo_pkgs[@]}") ;;
  dev) pkgs+=("${demo_pkgs[@]}" "${dev_pkgs[@]}") ;;
  *) echo "usage: $0 [runtime|demo|dev]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-system-deps: installing ${missing[*]}"
  apt-get update -q
  # policy-rc.d: a package's daemon (Debian's prometheus and docker.io start one) must not be
  # started here. Removed on any exit, Ctrl-C included: left behind, it would silently stop
  # every service start on the machine.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  exit 0
fi
echo "install-system-deps: all ${#pkgs[@]} $kind packages present"
