#!/usr/bin/env bash
# System packages diskguard needs, shared by .ci/run, the demo and the Dockerfile.
# Usage: scripts/install-system-deps.sh [runtime|demo|dev]
#   runtime: what the agent needs on a node (BCC, tools it reads with).
#   demo:    runtime + fio (the no-cluster demo runs real IO).
#   dev:     runtime + what the test lanes need (fio, qemu lane, prometheus).
set -euo pipefail
kind="${1:-dev}"
export DEBIAN_FRONTEND=noninteractive

runtime_pkgs=(python3 python3-venv python3-pip python3-bpfcc bpfcc-tools bpftool util-linux e2fsprogs)
dev_pkgs=(fio linux-headers-amd64 qemu-system-x86 busybox-static kmod cpio zstd procps prometheus)

pkgs=("${runtime_pkgs[@]}")
case "$kind" in
  runtime) ;;
  demo) pkgs+=(fio) ;;
  dev) pkgs+=("${dev_pkgs[@]}") ;;
  *) echo "usage: $0 [runtime|demo|dev]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
