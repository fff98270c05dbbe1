#!/usr/bin/env bash
# The cgroup-v2 test lane: runs a pytest selection as root inside a stock Debian kernel booted under
# qemu (TCG software emulation) with cgroup v2 only, and exits with the guest pytest's exit status.
#
# Run one lane alone (as root, after `scripts/install-system-deps.sh dev` and `scripts/setup-venv.sh dev`):
#   tests/vm/run-v2-lane.sh                          # the whole suite (pytest's testpaths)
#   tests/vm/run-v2-lane.sh tests/test_lane.py -v    # any pytest args; they run in the repo dir
#   tests/vm/run-v2-lane.sh --vm-timeout 600 -m v2   # host options first, then pytest args
#   tests/vm/run-v2-lane.sh --vm-setup-only          # only fill the cache (kernel, initramfs)
#   tests/vm/run-v2-lane.sh --vm-exec bash -c 'cat /sys/fs/cgroup/cgroup.controllers'
#                                                    # run a command instead of pytest (debugging)
# The host lane is simply pytest on this machine: `DISKGUARD_LANE=host .venv/bin/pytest ...`
# (scripts/test.sh runs both). tests/test_lane.py checks that a lane is what DISKGUARD_LANE says.
#
# Host options (or environment):
#   --vm-timeout SECS   DISKGUARD_VM_TIMEOUT (default 1200): kill the guest and fail after SECS
#   --vm-setup-only     prepare the cache and exit 0 without booting
#   --vm-exec CMD...    run CMD... (in the repo dir, same environment) instead of pytest
#   DISKGUARD_VM_CACHE  cache dir (default /var/cache/diskguard-vm); kernel + initramfs, ~420 MB
#   DISKGUARD_VM_MEM    guest memory in MiB (default 3072)   DISKGUARD_VM_SMP  vCPUs (default 2)
#   DISKGUARD_VM_DISK_SIZE  size of the sparse data disk /dev/vda (default 4G)
#   DISKGUARD_VM_KEEP=1 keep the run directory (console.log, pytest.log, disk.img) for inspection
#
# Exit status: the guest pytest's (0 passed, 1 failed, 5 no tests, ...); 124 the guest exceeded
# the timeout; 125 the guest died without a result (panic, oops, crash of its PID 1); 126 setup failed.
#
# What the guest is: the kernel that Debian's linux-image-amd64 depends on, at exactly the version of
# the installed linux-headers-amd64 (so BCC compiles against matching headers), booted with
# `cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1`. Its root is the host's / read-only over
# 9p (host python, bcc, fio, headers), tmpfs over /tmp /run /var /root, the repo over a separate
# read-write 9p share at the same absolute path as on the host (the venv's editable install points
# there), the kernel's module tree at /lib/modules/$(uname -r), and an empty sparse raw disk as
# /dev/vda. Inside: cgroup2 at /sys/fs/cgroup with +io in the root subtree_control, tracefs,
# debugfs, bpffs, lo up, DISKGUARD_LANE=v2, DISKGUARD_VM_DISK=/dev/vda; CI, PYTEST_ADDOPTS,
# HYPOTHESIS_PROFILE and other DISKGUARD_* variables are forwarded. No network (-nic none).
# Files: initramfs-init (the initramfs /init) and guest-run.sh (the guest's PID 1) beside this one.
# The repo share is cached (9p cache=loose): the guest does not see host edits made during a run.
# Each run gets its own directory under $cache/runs (results share + a fresh sparse data disk), so
# runs may overlap; setup is serialised by a lock. Things unused for a day are pruned from the cache.
#
# Measured on the 2-core dev machine: cold setup 4-10 s (one 70 MB apt download), warm <1 s; the
# guest starts pytest ~4 s after qemu starts; pytest's own start-up costs ~10 s under emulation
# and a BCC compile ~8 s. tests/test_lane.py takes ~30 s end to end on an idle machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${DISKGUARD_VM_CACHE:-/var/cache/diskguard-vm}"
timeout_s="${DISKGUARD_VM_TIMEOUT:-1200}"
mem="${DISKGUARD_VM_MEM:-3072}"
smp="${DISKGUARD_VM_SMP:-2}"
disk_size="${DISKGUARD_VM_DISK_SIZE:-4G}"
setup_only=0
mode=pytest
# Modules the initramfs loads itself (with their dependency chains); the rest of the tree is
# reachable in the guest through modprobe.
initrd_modules=(virtio_pci virtio_blk 9pnet_virtio 9p loop ext4)

say() { echo "v2-lane: $*" >&2; }
die_setup() {
    say "setup failed: $*"
    exit 126
}

while [ $# -gt 0 ]; do
    case "$1" in
    --vm-timeout) timeout_s="${2:?--vm-timeout needs seconds}"; shift 2 ;;
    --vm-timeout=*) timeout_s="${1#*=}"; shift ;;
    --vm-setup-only) setup_only=1; shift ;;
    --vm-exec) mode="exec"; shift; break ;;
    --) shift; break ;;
    *) break ;;
    esac
done
[ "$mode" = exec ] && [ $# = 0 ] && die_setup "--vm-exec needs a command"
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || die_setup "timeout must be a positive number of seconds, got '$timeout_s'"
[[ "$mem" =~ ^[1-9][0-9]*$ ]] || die_setup "DISKGUARD_VM_MEM must be MiB, got '$mem'"
[[ "$smp" =~ ^[1-9][0-9]*$ ]] || die_setup "DISKGUARD_VM_SMP must be a number, got '$smp'"

[ "$(id -u)" = 0 ] || die_setup "must run as root (9p passthrough of / and the guest's root tests)"
for tool in qemu-system-x86_64 apt-get apt-cache dpkg-deb dpkg-query depmod modprobe cpio gzip flock timeout; do
    command -v "$tool" >/dev/null || die_setup "$tool not found: run scripts/install-system-deps.sh dev"
done
# grep without -q: an early exit would SIGPIPE busybox and fail the pipeline under pipefail.
if ! { [ -x /bin/busybox ] && /bin/busybox --list | grep -x switch_root >/dev/null; }; then
    die_setup "busybox-static missing: run scripts/install-system-deps.sh dev"
fi
[ -x "$repo/.venv/bin/python" ] || die_setup "no venv at $repo/.venv: run scripts/setup-venv.sh dev"
case "$repo" in *[[:space:]]* | *,*) die_setup "the repo path must not contain spaces or commas (qemu -virtfs): $repo" ;; esac

# --- Which kernel: the one matching the installed headers exactly --------------------------------
hdr_dep="$(dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null)" \
    || die_setup "linux-headers-amd64 is not installed: run scripts/install-system-deps.sh dev"
hdr_pkg="${hdr_dep%% *}"                # linux-headers-6.1.0-56-amd64
kabi="${hdr_pkg#linux-headers-}"        # 6.1.0-56-amd64
kpkgver="$(dpkg-query -W -f='${Version}' "$hdr_pkg" 2>/dev/null)" || die_setup "$hdr_pkg is not installed"
[ -d "/usr/src/$hdr_pkg" ] || die_setup "/usr/src/$hdr_pkg is missing; reinstall $hdr_pkg"
img_pkg="linux-image-$kabi"

mkdir -p "$cache"
exec {lockfd}>"$cache/.lock"
flock -w 900 "$lockfd" || die_setup "another run holds $cache/.lock for too long"

kdir="$cache/kernel-$kabi-$kpkgver"
meta_depends() { # what apt's candidate linux-image-amd64 depends on; empty when apt knows none
    apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | sed -n '/^Depends: /{s///p;q}' || true
}
if [ ! -e "$kdir/.complete" ]; then
    t0=$SECONDS
    meta_dep="$(meta_depends)"
    if [ -z "$meta_dep" ]; then
        say "apt knows no linux-image-amd64 yet: apt-get update"
        apt-get update -qq || die_setup "apt-get update failed"
        meta_dep="$(meta_depends)"
    fi
    if [ "$meta_dep" != "$img_pkg (= $kpkgver)" ]; then
        say "note: linux-image-amd64 depends on '$meta_dep' but the installed headers are $hdr_pkg $kpkgver;"
        say "      using $img_pkg $kpkgver to match the headers (apt-get install linux-headers-amd64 to move both)"
    fi
    say "fetching $img_pkg $kpkgver into $kdir"
    rm -rf "$kdir.tmp"
    mkdir -p "$kdir.tmp/dl"
    # apt drops privileges to _apt for downloads; let it write there to avoid the unsandboxed warning.
    chown _apt "$kdir.tmp/dl" 2>/dev/null || true
    (cd "$kdir.tmp/dl" && apt-get download -qq "$img_pkg=$kpkgver") || {
        say "download failed; retrying after apt-get update"
        apt-get update -qq && (cd "$kdir.tmp/dl" && apt-get download -qq "$img_pkg=$kpkgver")
    } || die_setup "cannot download $img_pkg=$kpkgver (mirror moved on? apt-get install linux-headers-amd64 upgrades the headers)"
    dpkg-deb -x "$kdir.tmp/dl/"*.deb "$kdir.tmp/x" || die_setup "cannot extract $img_pkg"
    mv "$kdir.tmp/x/boot/vmlinuz-$kabi" "$kdir.tmp/vmlinuz"
    # $kdir is a module base dir (lib/modules/$kabi inside) for depmod -b and modprobe -d.
    mkdir -p "$kdir.tmp/lib/modules"
    mv "$kdir.tmp/x/lib/modules/$kabi" "$kdir.tmp/lib/modules/$kabi"
    # The headers package's links, so BCC finds the matching headers through /lib/modules/$kabi.
    ln -sfn "/usr/src/linux-headers-$kabi" "$kdir.tmp/lib/modules/$kabi/build"
    common="$(readlink "/lib/modules/$kabi/source" 2>/dev/null || true)"
    [ -n "$common" ] && ln -sfn "$common" "$kdir.tmp/lib/modules/$kabi/source"
    depmod -b "$kdir.tmp" "$kabi" || die_setup "depmod failed"
    rm -rf "$kdir.tmp/dl" "$kdir.tmp/x"
    touch "$kdir.tmp/.complete"
    rm -rf "$kdir"
    mv "$kdir.tmp" "$kdir"
    say "kernel ready in $((SECONDS - t0))s"
fi

# --- initramfs: busybox + the modules for 9p/virtio/loop/ext4 + initramfs-init ------------------
modlist="$(
    for m in "${initrd_modules[@]}"; do
        modprobe -d "$kdir" -S "$kabi" --show-depends "$m" \
            || die_setup "module $m not found for $kabi"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
)" || exit 126
initrd_key="$( { cat "$here/initramfs-init"; sha256sum /bin/busybox; echo "$kdir"; echo "$modlist"; } | sha256sum | cut -c1-16)"
initrd="$cache/initramfs-$kabi-$initrd_key.img"
if [ ! -e "$initrd" ]; then
    t0=$SECONDS
    stage="$(mktemp -d "$cache/.initrd.XXXXXX")"
    mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules}
    cp /bin/busybox "$stage/bin/busybox"
    install -m 0755 "$here/initramfs-init" "$stage/init"
    mknod -m 600 "$stage/dev/console" c 5 1
    mknod -m 666 "$stage/dev/null" c 1 3
    while read -r ko; do
        cp "$ko" "$stage/lib/modules/"
        basename "$ko" >>"$stage/lib/modules/load.list"
    done <<<"$modlist"
    (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$initrd.tmp" \
        || die_setup "cannot build the initramfs"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$stage"
    say "initramfs ready in $((SECONDS - t0))s"
fi
# Forget what no run has used for a day: initramfs images of older init scripts, kernels of older
# headers, run directories of killed runs. The current ones are touched so that they stay.
touch "$kdir" "$initrd"
mkdir -p "$cache/runs"
find "$cache" -mindepth 1 -maxdepth 1 \( -name 'initramfs-*.img' -o -name 'kernel-*' -o -name '.initrd.*' \) -mmin +1440 \
    -exec rm -rf {} +
find "$cache/runs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} +
flock -u "$lockfd"

if [ "$setup_only" = 1 ]; then
    say "cache ready: $kdir, $initrd"
    exit 0
fi

# --- One run: its own directory (results share + data disk), removed afterwards ------------------
run="$(mktemp -d "$cache/runs/run.XXXXXX")"
qemu_pid=""
tail_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
    if [ "${DISKGUARD_VM_KEEP:-0}" = 1 ]; then
        say "kept $run"
    else
        rm -rf "$run"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf 'REPO=%q\nMODE=%q\n' "$repo" "$mode" >"$run/lane.conf"
{
    for v in CI PYTEST_ADDOPTS HYPOTHESIS_PROFILE $(compgen -e | grep '^DISKGUARD_' || true); do
        case "$v" in DISKGUARD_LANE | DISKGUARD_VM_*) continue ;; esac
        [ -n "${!v+x}" ] && printf 'export %s=%q\n' "$v" "${!v}"
    done
} >"$run/env.sh"
if [ $# -gt 0 ]; then printf '%s\0' "$@" >"$run/args"; else : >"$run/args"; fi
cp "$here/guest-run.sh" "$run/guest-run.sh"
: >"$run/pytest.log"
: >"$run/console.log"
truncate -s "$disk_size" "$run/disk.img"

p9="security_model=none,multidevs=remap"
t_boot=$SECONDS
# psi=1: pressure stall information on, whatever the distribution kernel's default (the
# saturation tests read a throttled container's io.pressure).
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
    -nodefaults -accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem" \
    -nic none -display none -no-reboot \
    -serial "file:$run/console.log" \
    -kernel "$kdir/vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 panic=-1 oops=panic mitigations=off psi=1" \
    -virtfs "local,path=/,mount_tag=hostroot,$p9,readonly=on" \
    -virtfs "local,path=$repo,mount_tag=repo,$p9" \
    -virtfs "local,path=$run,mount_tag=results,$p9" \
    -virtfs "local,path=$kdir/lib/modules/$kabi,mount_tag=kmods,$p9,readonly=on" \
    -drive "file=$run/disk.img,if=virtio,format=raw,cache=none,aio=threads" \
    </dev/null >"$run/qemu.out" 2>&1 &
qemu_pid=$!
say "booting $kabi (timeout ${timeout_s}s, ${smp} vCPU, ${mem} MiB), $mode ${*:-<default>}"
tail -n +1 -f --pid="$qemu_pid" "$run/pytest.log" &
tail_pid=$!
set +e
wait "$qemu_pid"
qrc=$?
set -e
qemu_pid=""
wait "$tail_pid" 2>/dev/null
tail_pid=""

console_tail() {
    say "---- last 60 lines of the guest console ----"
    tail -n 60 "$run/console.log" | tr -d '\r' >&2
    if [ -s "$run/qemu.out" ]; then
        say "---- qemu output ----"
        cat "$run/qemu.out" >&2
    fi
}
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    console_tail
    say "FAILED: the guest exceeded the timeout of ${timeout_s}s and was killed"
    exit 124
fi
if [ ! -s "$run/rc" ]; then
    console_tail
    if grep -q 'Kernel panic' "$run/console.log"; then
        say "FAILED: the guest kernel panicked (qemu exit $qrc)"
    else
        say "FAILED: the guest stopped without a pytest result (qemu exit $qrc)"
    fi
    exit 125
fi
rc="$(cat "$run/rc")"
[[ "$rc" =~ ^[0-9]+$ ]] || { console_tail; say "FAILED: bad result '$rc'"; exit 125; }
if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then console_tail; fi
ready="$(cat "$run/ready_uptime" 2>/dev/null || echo '?')"
say "guest $mode exit status $rc; booted in ${ready}s (guest uptime at start), $((SECONDS - t_boot))s from boot to power-off"
exit "$rc"
