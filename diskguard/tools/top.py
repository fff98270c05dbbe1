"""`diskguard top`: per-container IO on this node's data disks, live (like biotop) or as
one JSON snapshot. Works on any Linux host, with or without a cluster.

Containers are the cgroups under kubepods (both cgroup drivers). When the API server is
reachable, they get their namespace/pod/container names (and labels, for `-l`) from the
pods of this node, listed again every NAMES_REFRESH seconds as pods come and go; otherwise
the cgroup path stands in for the name.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import attrs

from diskguard.config import Config
from diskguard.kube.pods import PodParseError, parse_pod
from diskguard.logs import get_logger
from diskguard.model import (
    UNLIMITED,
    CgroupDriver,
    Device,
    Direction,
    IOLimits,
    LimitField,
    Rates,
)
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import container_cgroups, kubepods_dirs, resolve_container_cgroup
from diskguard.node.limits import LimitBackend, LimitError, backend_for
from diskguard.policy.labels import Selector
from diskguard.policy.saturation import saturation
from diskguard.policy.values import Unlimited, limit_json, render_limit
from diskguard.sampler import RateTracker, Sampler, Target, open_sampler
from diskguard.sampler.latency import (
    DeviceLatency,
    LatencySnapshot,
    latency_between,
    percentiles,
)

log = get_logger(__name__)

NAMES_REFRESH = 10.0  # seconds between two lists of the node's pods


@attrs.frozen
class PodName:
    """What names one container cgroup: its pod's namespace and name, the container, and
    the pod's labels (for label selectors)."""

    namespace: str
    pod: str
    container: str
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Row:
    name: str  # namespace/pod/container, or the cgroup path
    namespace: str | None
    pod: str | None
    container: str | None
    cgroup: Path
    cgroup_id: int
    device: Device
    rates: Rates
    limits: IOLimits
    # Device service time over the interval; None when the sampler measures no latency.
    latency: DeviceLatency | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    def limit_use(self) -> dict[str, float | None]:
        """Per direction, the rate over the limit (the higher of IOPS and bytes/s); None
        for an unlimited direction. top's own counts: with the bpf sampler, requests."""
        ratios = saturation(self.rates, self.limits)
        return {str(d): (round(ratios[d], 3) if d in ratios else None) for d in Direction}

    def highest_use(self) -> float:
        return max((v for v in self.limit_use().values() if v is not None), default=0.0)

    def percentiles(self) -> dict[str, float | None]:
        if self.latency is None:
            return dict.fromkeys(
                ("read_p50_seconds", "read_p99_seconds", "write_p50_seconds", "write_p99_seconds")
            )
        return percentiles(self.latency)

    def as_json(self, sampler: str) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "container": self.container,
            "cgroup_id": self.cgroup_id,
            "cgroup": str(self.cgroup),
            "device": str(self.device),
            "device_name": self.device.name,
            "read_iops": round(self.rates.riops, 2),
            "write_iops": round(self.rates.wiops, 2),
            "read_bps": round(self.rates.rbps, 1),
            "write_bps": round(self.rates.wbps, 1),
            "limits": {k: limit_json(v) for k, v in self.limits.as_dict().items()},
            "limit_use": self.limit_use(),
            "sampler": sampler,
            # null: unavailable (cgroup sampler) or no request completed in the interval.
            **{k: (None if v is None else round(v, 6)) for k, v in self.percentiles().items()},
        }


def pod_names(
    pods: Sequence[Mapping[str, Any]],
    hierarchy: CgroupHierarchy,
    driver: CgroupDriver | None,
    kubelet_root: str,
) -> dict[Path, PodName]:
    """cgroup directory -> its names and labels, for the running containers."""
    names: dict[Path, PodName] = {}
    for obj in pods:
        try:
            pod = parse_pod(obj)
        except PodParseError:
            continue
        for c in pod.containers:
            ref = pod.container_ref(c)
            if ref is None:
                continue
            path = resolve_container_cgroup(hierarchy, ref, driver, kubelet_root)
            if path is not None:
                names[path] = PodName(pod.namespace, pod.name, c.name, pod.labels)
    return names


def list_node_pods(env: Mapping[str, str], node_name: str) -> list[dict[str, Any]] | None:
    """The pods of this node from the API server, or None without a reachable cluster."""
    from diskguard.kube.api import CoreApi
    from diskguard.kube.client import KubeConfigError, make_api_client

    try:
        api_client = make_api_client(env)
    except KubeConfigError:
        return None
    try:
        response = CoreApi(api_client).list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node_name}",
            _preload_content=False,
            _request_timeout=(3, 10),
        )
        body = json.loads(cast(Any, response).data)  # raw: _preload_content=False
        return list(body.get("items") or [])
    except Exception as exc:  # no cluster: names fall back to cgroup paths
        log.info("no pod names: showing cgroup paths", error=type(exc).__name__)
        return None
    finally:
        api_client.close()


class Top:
    def __init__(
        self,
        config: Config,
        hierarchy: CgroupHierarchy,
        devices: Sequence[Device],
        names: Mapping[Path, PodName],
        sampler: Sampler,
    ) -> None:
        self._config = config
        self._hierarchy = hierarchy
        self._devices = tuple(devices)
        self.names = names
        self.sampler = sampler
        self._backend: LimitBackend = backend_for(hierarchy.version)
        self._tracker = RateTracker(history=2)
        self._last_latency: LatencySnapshot | None = None

    def targets(self) -> list[Target]:
        found = []
        for top in kubepods_dirs(self._hierarchy, self._config.kubelet_cgroup_root):
            for path in container_cgroups(top):
                try:
                    found.append(Target.of(path))
                except OSError:
                    continue
        return found

    def sample(self) -> list[Row]:
        """One sampling pass: rates since the previous pass (none on the first)."""
        targets = self.targets()
        snapshot = self.sampler.read(targets)
        latency = self.sampler.read_latency(targets)
        rates = self._tracker.update(snapshot)
        window = None if latency is None else latency_between(self._last_latency, latency)
        self._last_latency = latency
        rows = []
        for target, per_device in rates.items():
            try:
                held = self._backend.read(target.path)
            except LimitError:
                held = {}
            named = self.names.get(target.path)
            for device, r in per_device.items():
                rows.append(
                    Row(
                        name=f"{named.namespace}/{named.pod}/{named.container}"
                        if named
                        else str(target.path.relative_to(self._hierarchy.path)),
                        namespace=named.namespace if named else None,
                        pod=named.pod if named else None,
                        container=named.container if named else None,
                        labels=named.labels if named else {},
                        cgroup=target.path,
                        cgroup_id=target.cgroup_id,
                        device=device,
                        rates=r,
                        limits=held.get((device.major, device.minor), UNLIMITED),
                        latency=None
                        if window is None
                        else window.get(target, {}).get(device, DeviceLatency()),
                    )
                )
        return rows


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    if key == "name":
        return sorted(rows, key=lambda r: (r.name, str(r.device)))
    if key == "total":
        return sorted(rows, key=lambda r: -(r.rates.riops + r.rates.wiops))
    if key == "limit":
        return sorted(rows, key=lambda r: -r.highest_use())
    return sorted(rows, key=lambda r: -r.rates.get(LimitField(key)))


def filter_rows(rows: list[Row], namespace: str | None, selector: Selector | None) -> list[Row]:
    """Rows of `namespace` whose pod matches `selector` (unnamed cgroups match neither)."""
    if namespace is not None:
        rows = [r for r in rows if r.namespace == namespace]
    if selector is not None:
        rows = [r for r in rows if r.pod is not None and selector.matches(r.labels)]
    return rows


def _human(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"


def _limit(value: int, human: bool = False) -> str:
    return render_limit(value, Unlimited.TABLE, _human if human else str)


def _seconds(value: float | None) -> str:
    """A latency for the table: "-" when unavailable or nothing completed."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}us"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def render(rows: Sequence[Row], sampler: Sampler, interval: float, limit: int) -> str:
    head = (
        f"diskguard top - {time.strftime('%H:%M:%S')}  sampler {sampler.kind}"
        f"{' (degraded: ' + sampler.degraded + ')' if sampler.degraded else ''}"
        f"  interval {interval:g}s  containers {len({r.cgroup for r in rows})}\n\n"
    )
    header = (
        f"{'R_IOPS':>8} {'W_IOPS':>8} {'R_BPS':>10} {'W_BPS':>10}  "
        f"{'LIMIT r/w IOPS':>15} {'LIMIT r/w BPS':>19}  "
        f"{'R_P50':>7} {'R_P99':>7} {'W_P50':>7} {'W_P99':>7} {'%LIM':>5}  {'DEV':<8} "
        "CONTAINER\n"
    )
    lines = []
    for r in rows[:limit]:
        lim_iops = f"{_limit(r.limits.riops)}/{_limit(r.limits.wiops)}"
        lim_bps = f"{_limit(r.limits.rbps, True)}/{_limit(r.limits.wbps, True)}"
        p = r.percentiles()
        lat = " ".join(f"{_seconds(v):>7}" for v in p.values())
        use = "-" if r.limits.is_unlimited() else f"{r.highest_use():.0%}"
        lines.append(
            f"{r.rates.riops:8.0f} {r.rates.wiops:8.0f} {_human(r.rates.rbps):>10} "
            f"{_human(r.rates.wbps):>10}  {lim_iops:>15} {lim_bps:>19}  {lat} {use:>5}  "
            f"{r.device.name or str(r.device):<8} {r.name}"
        )
    return head + header + "\n".join(lines)


def run_top(
    config: Config,
    env: Mapping[str, str],
    *,
    once: bool,
    as_json: bool,
    sort: str,
    count: int,
    rows_limit: int,
    echo: Callable[[str], None],
    interval: float | None = None,
    namespace: str | None = None,
    selector: Selector | None = None,
    clear: bool = False,
) -> None:
    """`clear`: clear the screen between tables (stdout is a terminal)."""
    from diskguard.node.setup import inspect_node

    node = inspect_node(config)
    driver = config.cgroup_driver
    seconds = interval if interval is not None else config.sample_interval

    def names_now() -> dict[Path, PodName] | None:
        pods = list_node_pods(env, config.node_name)
        if pods is None:
            return None
        return pod_names(pods, node.hierarchy, driver, config.kubelet_cgroup_root)

    names = names_now()
    listed_at = time.monotonic()
    if names is None and (namespace is not None or selector is not None):
        log.warning("no API server: containers have no names, so -n/-l match none")
    sampler = open_sampler(
        config.sampler,
        node.devices,
        node.hierarchy.path,
        node.hierarchy.version,
        get_logger("diskguard.sampler"),
    )
    try:
        top = Top(config, node.hierarchy, node.devices, names or {}, sampler)
        top.sample()  # baseline
        passes = 0
        while True:
            time.sleep(seconds)
            # Pods come and go: list them again now and then (only where a cluster
            # answered at all; without one, the cgroup paths stay the names).
            if names is not None and time.monotonic() - listed_at >= NAMES_REFRESH:
                listed_at = time.monotonic()
                fresh = names_now()
                if fresh is not None:
                    top.names = fresh
            rows = filter_rows(top.sample(), namespace, selector)
            rows = sort_rows(rows, sort)
            passes += 1
            if as_json:
                echo(
                    json.dumps(
                        {
                            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                            "node": config.node_name,
                            "sampler": sampler.kind,
                            "sampler_degraded": sampler.degraded,
                            "latency_unavailable": sampler.latency_problem,
                            "interval_seconds": seconds,
                            "containers": [r.as_json(sampler.kind) for r in rows],
                        },
                        indent=None if not once else 2,
                    )
                )
            else:
                if clear and not once:
                    sys.stdout.write("\033[2J\033[H")  # clear, like top
                echo(render(rows, sampler, seconds, rows_limit))
            if once or (count and passes >= count):
                return
    finally:
        sampler.close()
