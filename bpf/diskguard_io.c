// diskguard: count read/write requests and bytes per (cgroup, whole disk) at block_rq_issue.
//
// Compiled by BCC from diskguard/sampler/bpf.py, which passes every kernel-specific number as
// a -D macro. No kernel struct header is included: the structs on the path from a request to
// its cgroup are private to the block layer and change between builds, so their member
// offsets come from the running kernel's BTF (/sys/kernel/btf/vmlinux) instead.
//
// Latency (DG_MODE_BLKCG only): block_rq_issue stores (issue time, the request's key) in
// dg_start, keyed by the request pointer; block_rq_complete looks it up, adds the service
// time to the log2 histogram of that key in dg_lat and deletes the start entry. The start
// entry is shared (not per-CPU) because a request may complete on another CPU than the
// one that issued it, and the key is copied at issue because by completion the request's
// bios are gone. This is the device's service time (request issue -> completion): bios a
// blk-throttle limit holds back wait *before* they become requests and are not counted.
//
// Two modes:
//   DG_MODE_BLKCG (default): raw tracepoint; the cgroup is the one the block layer charges,
//     rq->bio->bi_blkg->blkcg->css.cgroup->kn->id, i.e. the inode of the cgroup directory
//     (blkio hierarchy on cgroup v1, unified hierarchy on v2). Correct for IO issued by
//     kernel threads on a container's behalf (loop workers, writeback, throttled bios).
//   DG_MODE_TASK: classic tracepoint, needs no BTF; the cgroup is the issuing task's
//     (bpf_get_current_cgroup_id, unified hierarchy only), wrong for kernel-thread IO.
//     No latency (built with DG_NO_LATENCY): the completion's request cannot be matched.

#ifndef DG_MAX_ENTRIES
#define DG_MAX_ENTRIES 32768
#endif
#ifndef DG_MAX_DEVICES
#define DG_MAX_DEVICES 256
#endif

#ifndef DG_MAX_INFLIGHT
#define DG_MAX_INFLIGHT 10240
#endif
#ifndef DG_LAT_ENTRIES
#define DG_LAT_ENTRIES 8192
#endif
// Slot i (i >= 1) counts service times in [2^i, 2^(i+1)) microseconds, slot 0 below 2 us;
// the last slot also takes everything longer (2^25 us = 33.6 s and up).
#define DG_LAT_SLOTS 26

#define DG_DIR_READ 0
#define DG_DIR_WRITE 1

// The agent reads and writes the maps below without BCC, through the ctypes twins of these
// structs in diskguard/sampler/maplayout.py: change both together (the agent checks the sizes
// BCC and the kernel report against its own before reading; tests/sampler/test_handoff.py too).
struct dg_key {
    u64 cgroup_id;
    u32 major;
    u32 minor;
    u32 dir;
    u32 pad;
};

struct dg_val {
    u64 ios;
    u64 bytes;
};

struct dg_dev {
    u32 major;
    u32 minor;
};

struct dg_lat {
    u64 slots[DG_LAT_SLOTS];
    u64 sum_ns;
};

struct dg_start {
    u64 ts;
    struct dg_key key;
};

// LRU: entries of cgroups that stopped doing IO (dead containers) age out on their own, so
// the map needs no garbage collection from user space and cannot fill up for good.
BPF_TABLE("lru_hash", struct dg_key, struct dg_val, dg_counts, DG_MAX_ENTRIES);
// Only the data devices user space asks about are counted (filled in from user space).
BPF_HASH(dg_devices, struct dg_dev, u8, DG_MAX_DEVICES);
#ifndef DG_NO_LATENCY
// Latency histograms per key, shared across CPUs (atomic adds), aged out like dg_counts.
BPF_TABLE("lru_hash", struct dg_key, struct dg_lat, dg_lat, DG_LAT_ENTRIES);
// In-flight requests: request pointer -> issue time and key, deleted at completion. A
// plain hash (cheaper per update than an LRU one): a request whose completion is never
// seen leaves an entry behind only until its request struct, which the block layer
// preallocates per tag and reuses, is issued again and overwrites it, so leftovers are
// bounded by the data disks' tags. When the map is full a request is counted, not timed; so
// is one whose issue probe runs in interrupt context while a probe it interrupted on that
// CPU updates this map (the kernel refuses the nested update with -EBUSY): rare, 0.2-0.7 % seen
// under load.
BPF_HASH(dg_start, u64, struct dg_start, DG_MAX_INFLIGHT);
#endif

static __always_inline int dg_wanted(u32 major, u32 minor)
{
    struct dg_dev dev = {};
    dev.major = major;
    dev.minor = minor;
    return dg_devices.lookup(&dev) != 0;
}

static __always_inline int dg_count(u64 cgroup_id, u32 major, u32 minor, u32 dir, u64 bytes)
{
    struct dg_key key = {};
    key.cgroup_id = cgroup_id;
    key.major = major;
    key.minor = minor;
    key.dir = dir;
    struct dg_val zero = {};
    struct dg_val *val = dg_counts.lookup_or_try_init(&key, &zero);
    if (!val)
        return 0;
    // Shared entry across CPUs: atomic adds keep counts exact without a per-CPU map.
    __sync_fetch_and_add(&val->ios, 1);
    __sync_fetch_and_add(&val->bytes, bytes);
    return 0;
}

#ifndef DG_MODE_TASK

static __always_inline void *dg_read_ptr(const void *base, u32 offset)
{
    void *ptr = 0;
    if (base)
        DG_PROBE_READ(&ptr, sizeof(ptr), (const char *)base + offset);
    return ptr;
}

RAW_TRACEPOINT_PROBE(block_rq_issue)
{
    const void *rq = (const void *)ctx->args[DG_ARG_RQ];
    if (!rq)
        return 0;

    u32 flags = 0;
    DG_PROBE_READ(&flags, sizeof(flags), (const char *)rq + DG_OFF_RQ_CMD_FLAGS);
    u32 op = flags & DG_REQ_OP_MASK;
    u32 dir;
    if (op == DG_REQ_OP_READ)
        dir = DG_DIR_READ;
    else if (op == DG_REQ_OP_WRITE)
        dir = DG_DIR_WRITE;
    else
        return 0;  // flush, discard, write-zeroes, driver-private: not data IO

#ifdef DG_OFF_RQ_DISK
    const void *disk = dg_read_ptr(rq, DG_OFF_RQ_DISK);
#else
    const void *disk = dg_read_ptr(dg_read_ptr(rq, DG_OFF_RQ_Q), DG_OFF_Q_DISK);
#endif
    if (!disk)
        return 0;
    int major = 0, first_minor = 0;
    DG_PROBE_READ(&major, sizeof(major), (const char *)disk + DG_OFF_DISK_MAJOR);
    DG_PROBE_READ(&first_minor, sizeof(first_minor), (const char *)disk + DG_OFF_DISK_FIRST_MINOR);
    // Filter before walking to the cgroup: most requests on a node are for other disks.
    if (!dg_wanted((u32)major, (u32)first_minor))
        return 0;

    u32 len = 0;
    DG_PROBE_READ(&len, sizeof(len), (const char *)rq + DG_OFF_RQ_DATA_LEN);

    // A request without a blkg (no bio, or IO not associated with any cgroup) is counted
    // under id 0 so it stays visible instead of vanishing.
    u64 cgroup_id = 0;
    const void *blkg = dg_read_ptr(dg_read_ptr(rq, DG_OFF_RQ_BIO), DG_OFF_BIO_BLKG);
    const void *blkcg = dg_read_ptr(blkg, DG_OFF_BLKG_BLKCG);
    const void *kn = dg_read_ptr(dg_read_ptr(blkcg, DG_OFF_BLKCG_CGROUP), DG_OFF_CGROUP_KN);
    if (kn)
        DG_PROBE_READ(&cgroup_id, DG_KN_ID_SIZE, (const char *)kn + DG_OFF_KN_ID);

    dg_count(cgroup_id, (u32)major, (u32)first_minor, dir, len);
#ifndef DG_NO_LATENCY
    // A requeued request is issued again: the update restarts its clock.
    struct dg_start start = {};
    start.ts = bpf_ktime_get_ns();
    start.key.cgroup_id = cgroup_id;
    start.key.major = (u32)major;
    start.key.minor = (u32)first_minor;
    start.key.dir = dir;
    u64 rq_key = (u64)rq;
    dg_start.update(&rq_key, &start);
#endif
    return 0;
}

#ifndef DG_NO_LATENCY
RAW_TRACEPOINT_PROBE(block_rq_complete)
{
    const void *rq = (const void *)ctx->args[DG_ARG_RQ_COMPLETE];
    if (!rq)
        return 0;
    u64 rq_key = (u64)rq;
    struct dg_start *start = dg_start.lookup(&rq_key);
    if (!start)
        return 0;  // not a data request on a wanted disk, or issued before we attached
    // blk_update_request() traces every partial completion with the bytes it completes,
    // before taking them off __data_len: only the last one ends the request.
    u32 remaining = 0;
    DG_PROBE_READ(&remaining, sizeof(remaining), (const char *)rq + DG_OFF_RQ_DATA_LEN);
    u32 nr_bytes = (u32)ctx->args[DG_ARG_NR_BYTES];
    if (nr_bytes < remaining)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 ts = start->ts;
    struct dg_key key = start->key;
    dg_start.delete(&rq_key);
    if (now < ts)
        return 0;
    u64 delta = now - ts;
    u64 slot = bpf_log2l(delta / 1000) - 1;  // bpf_log2l(v) = bit length of v, 1 for v = 0
    if (slot >= DG_LAT_SLOTS)
        slot = DG_LAT_SLOTS - 1;
    // Older verifiers (6.1) lose the bound when clang folds the clamp into the index
    // arithmetic: hide the value from the optimiser, then check it where it is used.
    asm volatile("" : "+r"(slot));
    if (slot >= DG_LAT_SLOTS)
        return 0;
    struct dg_lat zero = {};
    struct dg_lat *lat = dg_lat.lookup_or_try_init(&key, &zero);
    if (!lat)
        return 0;
    __sync_fetch_and_add(&lat->slots[slot], 1);
    __sync_fetch_and_add(&lat->sum_ns, delta);
    return 0;
}
#endif  // DG_NO_LATENCY

#else  // DG_MODE_TASK

TRACEPOINT_PROBE(block, block_rq_issue)
{
    // rwbs: optional 'F' (preflush), then 'W', 'R', 'D', 'N', 'F' for the operation.
    char op = args->rwbs[0];
    if (op == 'F')
        op = args->rwbs[1];
    u32 dir;
    if (op == 'R')
        dir = DG_DIR_READ;
    else if (op == 'W')
        dir = DG_DIR_WRITE;
    else
        return 0;
    // dev_t inside the kernel is MAJOR << 20 | MINOR.
    u32 major = args->dev >> 20;
    u32 minor = args->dev & ((1U << 20) - 1);
    if (!dg_wanted(major, minor))
        return 0;
    return dg_count(bpf_get_current_cgroup_id(), major, minor, dir, args->bytes);
}

#endif
