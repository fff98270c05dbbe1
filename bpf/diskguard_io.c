// diskguard: count read/write requests and bytes per (cgroup, whole disk) at block_rq_issue.
//
// Compiled by BCC from diskguard/sampler/bpf.py, which passes every kernel-specific number as
// a -D macro. No kernel struct header is included: the structs on the path from a request to
// its cgroup are private to the block layer and change between builds, so their member
// offsets come from the running kernel's BTF (/sys/kernel/btf/vmlinux) instead.
//
// Two modes:
//   DG_MODE_BLKCG (default): raw tracepoint; the cgroup is the one the block layer charges,
//     rq->bio->bi_blkg->blkcg->css.cgroup->kn->id, i.e. the inode of the cgroup directory
//     (blkio hierarchy on cgroup v1, unified hierarchy on v2). Correct for IO issued by
//     kernel threads on a container's behalf (loop workers, writeback, throttled bios).
//   DG_MODE_TASK: classic tracepoint, needs no BTF; the cgroup is the issuing task's
//     (bpf_get_current_cgroup_id, unified hierarchy only), wrong for kernel-thread IO.

#ifndef DG_MAX_ENTRIES
#define DG_MAX_ENTRIES 32768
#endif
#ifndef DG_MAX_DEVICES
#define DG_MAX_DEVICES 256
#endif

#define DG_DIR_READ 0
#define DG_DIR_WRITE 1

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

// LRU: entries of cgroups that stopped doing IO (dead containers) age out on their own, so
// the map needs no garbage collection from user space and cannot fill up for good.
BPF_TABLE("lru_hash", struct dg_key, struct dg_val, dg_counts, DG_MAX_ENTRIES);
// Only the data devices user space asks about are counted (filled in from user space).
BPF_HASH(dg_devices, struct dg_dev, u8, DG_MAX_DEVICES);

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

    return dg_count(cgroup_id, (u32)major, (u32)first_minor, dir, len);
}

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
