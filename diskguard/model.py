"""Value types shared by every floor of diskguard.

Everything here is immutable and free of I/O: adapters parse outside input into these
values once, and the rest of the code only ever sees them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs

# What the kernel accepts. blk-throttle keeps IOPS limits as `unsigned int` and BPS limits
# as u64 where U64_MAX means "no limit"; anything beyond is refused or silently clamped,
# so we refuse it ourselves and say why.
# U32_MAX itself reads back as "no limit", so the largest real IOPS limit is one less
# (2**32 - 2 reads back as itself: measured on v1, and io.max prints "max" only for U32_MAX).
MAX_IOPS = 2**32 - 2
MAX_BPS = 2**63 - 1
# io.max takes no limit below 2 (EINVAL for 1, measured on 6.1); v1 takes 1.
V2_MIN_LIMIT = 2


class CgroupVersion(enum.Enum):
    V1 = "v1"
    V2 = "v2"


class CgroupDriver(enum.Enum):
    CGROUPFS = "cgroupfs"
    SYSTEMD = "systemd"


class Runtime(enum.Enum):
    CONTAINERD = "containerd"
    DOCKER = "docker"
    CRIO = "cri-o"


class SamplerKind(enum.Enum):
    """SAMPLER: eBPF when it can run (AUTO), eBPF or nothing (BPF), cgroup counters (CGROUP)."""

    AUTO = "auto"
    BPF = "bpf"
    CGROUP = "cgroup"


class LatencyMetrics(enum.Enum):
    """LATENCY_METRICS: the latency histograms' series per container, per pod, or none
    (a bound on cardinality: 15 buckets x devices x 2 directions per series)."""

    CONTAINER = "container"
    POD = "pod"
    OFF = "off"


class QoSClass(enum.Enum):
    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BESTEFFORT = "BestEffort"


# Hash cached: devices, container keys and targets key the per-pass dictionaries.
@attrs.frozen(order=True, cache_hash=True)
class Device:
    """A whole block device, the unit the kernel's IO throttling is keyed by."""

    major: int
    minor: int
    name: str = attrs.field(default="", eq=False, order=False)

    def __str__(self) -> str:
        return f"{self.major}:{self.minor}"


class LimitUnit(enum.StrEnum):
    """What a limit counts (also the `unit` metrics label)."""

    IOPS = "iops"
    BPS = "bps"


class Direction(enum.StrEnum):
    """Which IO a limit holds back (also the `direction` metrics label)."""

    READ = "read"
    WRITE = "write"


class LimitField(enum.StrEnum):
    """One of the four limits the kernel keeps per cgroup and device.

    The value is the IOLimits/Rates attribute and the cgroup v2 io.max key; everything else
    that names the field (units, messages, env vars, v1 knob files) is derived here once."""

    RIOPS = "riops"
    WIOPS = "wiops"
    RBPS = "rbps"
    WBPS = "wbps"

    @property
    def unit(self) -> LimitUnit:
        return LimitUnit.IOPS if self in (LimitField.RIOPS, LimitField.WIOPS) else LimitUnit.BPS

    @property
    def direction(self) -> Direction:
        return Direction.READ if self in (LimitField.RIOPS, LimitField.RBPS) else Direction.WRITE

    @property
    def words(self) -> str:
        """How messages name the field: `read IOPS`, `write B/s`."""
        return f"{self.direction} {'IOPS' if self.unit is LimitUnit.IOPS else 'B/s'}"

    @property
    def env_suffix(self) -> str:
        """The tail of the env vars for this field: `READ_IOPS` (LIMIT_CEILING_READ_IOPS)."""
        return f"{self.direction}_{self.unit}".upper()

    @property
    def v1_knob(self) -> str:
        """The cgroup v1 blk-throttle file: `blkio.throttle.read_iops_device`."""
        return f"blkio.throttle.{self.direction}_{self.unit}_device"

    @property
    def v2_key(self) -> str:
        """The key in cgroup v2 io.max lines: `riops`."""
        return self.value

    @property
    def annotation_suffixes(self) -> tuple[str, str]:
        """The limit-key suffixes that may set this field, strongest first:
        the direction key (`read-iops`), then the combined key (`iops`)."""
        return (f"{self.direction}-{self.unit}", str(self.unit))

    @property
    def kernel_max(self) -> int:
        """The largest limit the kernel keeps for this field."""
        return MAX_IOPS if self.unit is LimitUnit.IOPS else MAX_BPS


LIMIT_FIELDS: tuple[LimitField, ...] = tuple(LimitField)


@attrs.frozen
class IOLimits:
    """IO limits for one cgroup on one device. 0 means unlimited in that direction."""

    riops: int = 0
    wiops: int = 0
    rbps: int = 0
    wbps: int = 0

    @classmethod
    def of(cls, values: Mapping[LimitField, int]) -> IOLimits:
        """Limits from per-field values (a field not given is unlimited)."""
        return cls(**{LimitField(f).value: v for f, v in values.items()})

    @classmethod
    def per_unit(cls, iops: int, bps: int) -> IOLimits:
        """The same IOPS limit both ways and the same bytes/s limit both ways."""
        return cls(riops=iops, wiops=iops, rbps=bps, wbps=bps)

    def get(self, field: LimitField) -> int:
        match field:
            case LimitField.RIOPS:
                return self.riops
            case LimitField.WIOPS:
                return self.wiops
            case LimitField.RBPS:
                return self.rbps
            case LimitField.WBPS:
                return self.wbps

    def replace(self, field: LimitField, value: int) -> IOLimits:
        return attrs.evolve(self, **{field.value: value})

    def as_dict(self) -> dict[LimitField, int]:
        return {f: self.get(f) for f in LimitField}

    def is_unlimited(self) -> bool:
        return not any(self.get(f) for f in LimitField)

    def stricter(self, other: IOLimits) -> IOLimits:
        """Per field, the stricter of two limits (0 = unlimited never wins over a number)."""

        def pick(a: int, b: int) -> int:
            if a == 0:
                return b
            if b == 0:
                return a
            return min(a, b)

        return IOLimits.of({f: pick(self.get(f), other.get(f)) for f in LimitField})


UNLIMITED = IOLimits()


@attrs.frozen
class DeviceLimits:
    """What one cgroup should hold on one device."""

    limits: IOLimits = UNLIMITED
    # Fields whose current kernel value stays (clamped to `ceilings`): `limits` gives them
    # only where the kernel holds no limit yet (a bad value with no last good one).
    keep: frozenset[LimitField] = frozenset()
    ceilings: IOLimits = UNLIMITED

    def against(self, kernel: IOLimits) -> IOLimits:
        """The limits to write, given what the kernel holds on this device now."""
        if not self.keep:
            return self.limits
        values = self.limits.as_dict()
        for field in self.keep:
            held = kernel.get(field)
            ceiling = self.ceilings.get(field)
            if held:
                values[field] = min(held, ceiling) if ceiling else held
        return IOLimits.of(values)


@attrs.frozen
class DesiredLimits:
    """What one container's cgroup should hold, device by device (the data devices when
    it was planned). A device not in it is left as it is."""

    devices: tuple[tuple[Device, DeviceLimits], ...] = ()

    @classmethod
    def same(cls, devices: Iterable[Device], limits: DeviceLimits) -> DesiredLimits:
        return cls(tuple((device, limits) for device in devices))

    def get(self, device: Device) -> DeviceLimits | None:
        for known, limits in self.devices:
            if known == device:
                return limits
        return None


class ContainerKind(enum.Enum):
    """Which list of the pod spec a container comes from. Every kind runs in its own cgroup
    under the pod's and does IO on the node's disks, so every kind is limited while it runs."""

    REGULAR = "container"  # spec.containers
    INIT = "init"  # spec.initContainers: runs to completion before the regular ones start
    SIDECAR = "sidecar"  # spec.initContainers with restartPolicy Always: runs for the pod's life
    EPHEMERAL = "ephemeral"  # spec.ephemeralContainers (kubectl debug)


@attrs.frozen
class ContainerInfo:
    """A container of a pod (any kind) as the API server reports it."""

    name: str
    image: str
    # Validated lowercase hex; None while the runtime has not started it yet.
    container_id: str | None = None
    runtime: Runtime | None = None
    # Only a running container has a cgroup worth limiting; a terminated one's is gone.
    running: bool = False
    kind: ContainerKind = ContainerKind.REGULAR


@attrs.frozen
class PodInfo:
    """The parts of a Pod diskguard acts on, parsed and validated at the API edge."""

    uid: str
    namespace: str
    name: str
    node_name: str
    qos: QoSClass
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    annotations: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    containers: tuple[ContainerInfo, ...] = ()
    resource_version: str = ""
    # The UID kubelet names the pod's cgroup after: for a static pod the config hash in its
    # mirror pod's `kubernetes.io/config.mirror` annotation, not the API object's UID.
    cgroup_uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def container_ref(self, container: ContainerInfo) -> ContainerRef | None:
        """The container instance to find a cgroup for, or None before the runtime made it."""
        if not (container.container_id and container.runtime):
            return None
        return ContainerRef(
            namespace=self.namespace,
            pod=self.name,
            pod_uid=self.uid,
            container=container.name,
            container_id=container.container_id,
            runtime=container.runtime,
            qos=self.qos,
            cgroup_uid=self.cgroup_uid,
        )


@attrs.frozen(cache_hash=True)
class ContainerKey:
    """Identifies a container slot across restarts (the container ID changes, this does not)."""

    pod_uid: str
    container: str


@attrs.frozen
class ContainerRef:
    """One running container instance, enough to find its cgroup."""

    namespace: str
    pod: str
    pod_uid: str
    container: str
    container_id: str
    runtime: Runtime
    qos: QoSClass
    cgroup_uid: str = ""  # see PodInfo.cgroup_uid; empty = pod_uid

    @property
    def cgroup_pod_uid(self) -> str:
        return self.cgroup_uid or self.pod_uid

    @property
    def key(self) -> ContainerKey:
        return ContainerKey(self.pod_uid, self.container)

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@attrs.frozen
class Counters:
    """Cumulative IO counters of one cgroup on one device (monotonic until a reset)."""

    rios: int = 0
    wios: int = 0
    rbytes: int = 0
    wbytes: int = 0


@attrs.frozen
class Rates:
    """IO rates of one cgroup on one device over one sampling interval (per second)."""

    riops: float = 0.0
    wiops: float = 0.0
    rbps: float = 0.0
    wbps: float = 0.0

    def get(self, field: LimitField) -> float:
        match field:
            case LimitField.RIOPS:
                return self.riops
            case LimitField.WIOPS:
                return self.wiops
            case LimitField.RBPS:
                return self.rbps
            case LimitField.WBPS:
                return self.wbps

    @classmethod
    def of(cls, values: Mapping[LimitField, float]) -> Rates:
        return cls(**{LimitField(f).value: v for f, v in values.items()})


class ErrorStage(enum.Enum):
    """Where an unexpected error stopped the work for one pod or container."""

    EVENT = "event"  # taking in a watch event
    PLAN = "plan"  # planning the pod's limits
    APPLY = "apply"  # applying one container's limits to its cgroup


@attrs.frozen
class PodError:
    """The latest unexpected error contained to one pod (or container), for /status."""

    stage: ErrorStage
    pod: str  # namespace/name
    error: str
    container: str = ""


# Pass and apply durations: from well under a millisecond (a quiet node) to seconds (a
# thousand containers on a starved machine).
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@attrs.frozen
class DurationHistogram:
    """Counts of observed durations per bucket (not cumulative; the last slot is +Inf) and
    their sum, as a Prometheus histogram reports them. A value: `observe` returns a new one."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: tuple[int, ...] = attrs.field()
    sum_seconds: float = 0.0

    @counts.default
    def _zeros(self) -> tuple[int, ...]:
        return (0,) * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> DurationHistogram:
        slot = next((i for i, le in enumerate(self.bounds) if seconds <= le), len(self.bounds))
        counts = list(self.counts)
        counts[slot] += 1
        return attrs.evolve(self, counts=tuple(counts), sum_seconds=self.sum_seconds + seconds)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) per bucket, +Inf last."""
        out, total = [], 0
        for le, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((le, total))
        return out
