#!/bin/bash
# PID 1 of the v2 lane guest, run on the host's userland (9p root) after initramfs-init.
# Mounts the kernel interfaces a node has, runs pytest in the repo and powers off; the host side
# reads the exit status from $R/rc.
# MODE=exec (run-v2-lane.sh --vm-exec) runs the given command instead of pytest. Its stdout is the serial console (the host's console.log).
set -u
R=/run/diskguard-lane
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "diskguard-vm(guest): $*"; }

poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger
    # sysrq poweroff is asynchronous and returning from PID 1 would panic, so wait; with a builtin,
    # as exec'ing anything may fail once the 9p shares go away.
    read -r -t 60 _ <&9
}

finish() {
    # rc is written last and atomically: its presence is the host's proof that pytest ran to the end.
    echo "$1" >"$R/rc.tmp" && mv "$R/rc.tmp" "$R/rc"
    log "pytest exit status $1, powering off"
    poweroff_now
}

must() {
    "$@" || {
        log "FATAL: $*"
        poweroff_now
    }
}

mkfifo /run/pid1-wait && exec 9<>/run/pid1-wait # an fd that never delivers data, for poweroff_now
must mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
must mount -t tracefs tracefs /sys/kernel/tracing
must mount -t debugfs debugfs /sys/kernel/debug
must mount -t bpf bpf /sys/fs/bpf
mkdir -p /dev/pts /dev/shm
must mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
must mount -t tmpfs -o mode=1777 shm /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

must sh -c 'echo +io >/sys/fs/cgroup/cgroup.subtree_control'
must busybox ip link set lo up # busybox: a hard dependency already, iproute2 may be absent
hostname diskguard-v2 2>/dev/null || true

# lane.conf: REPO=...; env.sh: variables forwarded from the host; args: pytest args, NUL-separated.
# shellcheck source=/dev/null
. "$R/lane.conf"
# shellcheck source=/dev/null
. "$R/env.sh"
mapfile -d '' -t args <"$R/args"

export HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1
export DISKGUARD_LANE=v2 DISKGUARD_VM_DISK=/dev/vda
[ -b "$DISKGUARD_VM_DISK" ] || log "WARNING: data disk $DISKGUARD_VM_DISK is missing"

must cd "$REPO"
cut -d' ' -f1 /proc/uptime >"$R/ready_uptime"
log "kernel $(uname -r), up $(cat "$R/ready_uptime")s, running $MODE ${args[*]}"
if [ "$MODE" = exec ]; then
    "${args[@]}" >"$R/pytest.log" 2>&1 </dev/null
else
    "$REPO/.venv/bin/python" -m pytest -p no:cacheprovider "${args[@]}" >"$R/pytest.log" 2>&1 </dev/null
fi
finish "$?"
