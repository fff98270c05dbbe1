"""`diskguard doctor`: check and explain everything the agent depends on, on this node.

Each check is independent and says what it found and, when something is wrong, what to do.
Nothing here changes state (SelfSubjectAccessReviews only ask the API server).
"""

from __future__ import annotations

import enum
import importlib.util
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from diskguard.config import Config, ConfigError, load_config
from diskguard.kube.access import BASE_ACCESS, SMART_LIMIT_ACCESS, Access, denied_access
from diskguard.model import CgroupDriver, CgroupVersion, Device, SamplerKind
from diskguard.node.capacity import disk_identity, read_capacity
from diskguard.node.cgroups import CgroupError, CgroupHierarchy, detect_cgroup
from diskguard.node.datadisks import resolve
from diskguard.node.devices import DeviceError, resolve_data_devices
from diskguard.node.kubepods import container_cgroups, kubepods_dirs
from diskguard.node.state import StateDir, StateError
from diskguard.sampler.base import SamplerUnavailable
from diskguard.sampler.bpf import (
    COMPLETE_TRACEPOINT,
    BpfOptions,
    blkcg_layout,
    latency_layout,
    open_bpf_sampler,
)
from diskguard.sampler.btf import BTF, VMLINUX_BTF, BTFError


def required_access(config: Config) -> tuple[Access, ...]:
    """The permissions the agent uses with this configuration: the base ClusterRole's
    (deploy/), plus deploy/components/smart-limit's when smart limit patches pods."""
    smart = config.smart.enabled and not config.smart.dry_run
    return BASE_ACCESS + (SMART_LIMIT_ACCESS if smart else ())


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@attrs.frozen
class Finding:
    check: str
    status: Status
    detail: str


@attrs.define
class Doctor:
    env: Mapping[str, str]
    findings: list[Finding] = attrs.Factory(list)
    btf_path: Path = VMLINUX_BTF
    bpf_options: BpfOptions = attrs.Factory(BpfOptions)

    def add(self, check: str, status: Status, detail: str) -> None:
        self.findings.append(Finding(check, status, detail))

    def run(self) -> list[Finding]:
        try:
            config = load_config(self.env)
        except ConfigError as exc:
            self.add("configuration", Status.FAIL, str(exc))
            return self.findings
        self.add("configuration", Status.OK, f"node {config.node_name}")
        hierarchy = self._cgroup(config)
        if hierarchy is not None:
            self._layout(config, hierarchy)
        self._devices(config)
        self._bpf()
        if hierarchy is not None:
            self._bpf_loader(config, hierarchy)
        self._latency()
        self._api(config)
        return self.findings

    def _cgroup(self, config: Config) -> CgroupHierarchy | None:
        try:
            hierarchy = detect_cgroup(config.cgroup_root, config.cgroup_version)
        except CgroupError as exc:
            self.add("cgroup hierarchy", Status.FAIL, str(exc))
            return None
        what = "blkio.throttle.*" if hierarchy.version is CgroupVersion.V1 else "io.max"
        self.add(
            "cgroup hierarchy",
            Status.OK,
            f"cgroup {hierarchy.version.value} at {hierarchy.path}; limits go to {what}",
        )
        return hierarchy

    def _layout(self, config: Config, hierarchy: CgroupHierarchy) -> None:
        tops = kubepods_dirs(hierarchy, config.kubelet_cgroup_root)
        if not tops:
            self.add(
                "kubelet cgroup layout",
                Status.WARN,
                f"no kubepods cgroup under {hierarchy.path} for KUBELET_CGROUP_ROOT="
                f"{config.kubelet_cgroup_root}: no pods yet, or the root/mount is wrong",
            )
            return
        found = {top: sum(1 for _ in container_cgroups(top)) for top in tops}
        drivers = [
            (CgroupDriver.SYSTEMD if top.name.endswith(".slice") else CgroupDriver.CGROUPFS, top, n)
            for top, n in found.items()
        ]
        detail = "; ".join(f"{d.value} layout at {top} ({n} containers)" for d, top, n in drivers)
        wanted = config.cgroup_driver
        if wanted is not None and all(d is not wanted for d, _, _ in drivers):
            self.add(
                "kubelet cgroup layout",
                Status.FAIL,
                f"CGROUP_DRIVER={wanted.value} but only {detail}",
            )
            return
        if hierarchy.version is CgroupVersion.V2:
            for _, top, _ in drivers:
                control = top / "cgroup.subtree_control"
                if "io" not in control.read_text().split():
                    self.add(
                        "io controller",
                        Status.FAIL,
                        f"{control} lacks io: containers below cannot be limited",
                    )
                    return
        self.add("kubelet cgroup layout", Status.OK, detail)

    def _devices(self, config: Config) -> None:
        try:
            devices = resolve_data_devices(config.data_mounts)
        except DeviceError as exc:
            self.add("data devices", Status.FAIL, str(exc))
            return
        mounts = ", ".join(config.data_mounts)
        disks = ", ".join(f"{d.name or '?'} ({d})" for d in devices)
        # The agent's own check: a path with no disk mounted yet is not taken.
        waiting = resolve(
            config.data_mounts, allow_unmounted=config.data_mount_allow_unmounted
        ).problem
        if waiting:
            self.add("data devices", Status.FAIL, f"{waiting} (the agent is not ready meanwhile)")
            return
        self.add("data devices", Status.OK, f"{mounts} -> whole disks {disks}")
        self._capacity(config, devices)

    def _capacity(self, config: Config, devices: Sequence[Device]) -> None:
        """What `diskguard profile` recorded for each data disk (by its identity)."""
        try:
            recorded = read_capacity(StateDir(Path(config.state_dir)))
        except StateError as exc:
            self.add("disk capacity", Status.WARN, f"{exc}: run `diskguard profile` again")
            return
        said, missing = [], []
        for device in devices:
            identity = disk_identity(device)
            found = recorded.get(identity) if identity else None
            if found is None:
                why = "no stable identity" if identity is None else "not measured"
                missing.append(f"{device.name or device} ({why})")
            else:
                said.append(f"{device.name or device}: {found.describe()}")
        if missing:
            declared = config.smart.settings.device_iops or config.smart.settings.device_bps
            fallback = (
                "the declared SMART_LIMIT_DEVICE_* stands in"
                if declared
                else "capacity-relative amounts (%cap) are not judged"
            )
            said.append(
                f"{', '.join(missing)}: run `diskguard profile` on a quiet node; meanwhile "
                f"{fallback}"
            )
        self.add("disk capacity", Status.OK, "; ".join(said))

    def _bpf(self) -> None:
        problems = []
        if importlib.util.find_spec("bcc") is None:
            problems.append("the bcc module is not importable (install python3-bpfcc)")
        if not Path("/sys/kernel/btf/vmlinux").exists():
            problems.append("no /sys/kernel/btf/vmlinux: per-container attribution degrades")
        tracefs = any(
            _is_dir(Path(p, "events")) for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
        )
        if not tracefs:
            problems.append("tracefs is not mounted (the agent mounts it if it may)")
        if problems:
            self.add("eBPF sampling", Status.WARN, "; ".join(problems))
        else:
            self.add("eBPF sampling", Status.OK, "bcc importable, BTF and tracefs present")

    def _bpf_loader(self, config: Config, hierarchy: CgroupHierarchy) -> None:
        """Run the BPF loader as the agent would (compile, load, attach, hand over), then
        detach: says why the agent measures with the cgroup counters instead, if it does."""
        check = "eBPF loader"
        if config.sampler is SamplerKind.CGROUP:
            self.add(check, Status.OK, "not used (SAMPLER=cgroup)")
            return
        # SAMPLER=bpf refuses to start without it; auto falls back to the cgroup counters.
        if config.sampler is SamplerKind.BPF:
            failed, then = Status.FAIL, "SAMPLER=bpf: the agent will not start"
        else:
            failed, then = Status.WARN, "the agent measures with the cgroup IO counters"
        try:
            devices = resolve_data_devices(config.data_mounts)
        except DeviceError:
            self.add(check, Status.WARN, "not tried: no data devices (see above)")
            return
        try:
            sampler = open_bpf_sampler(
                devices, hierarchy.path, hierarchy.version, _QuietLog(), self.bpf_options
            )
        except SamplerUnavailable as exc:
            self.add(check, failed, f"{exc} ({then})")
            return
        info = sampler.info
        sampler.close()
        self.add(
            check,
            Status.OK,
            f"compiled and attached in a loader process in {info.get('loader_seconds')}s "
            f"(compile {info.get('compile_seconds')}s, loader peak "
            f"{int(info.get('loader_peak_kib', '0')) // 1024} MiB, of it at the end "
            f"{int(info.get('loader_anon_kib', '0')) // 1024} MiB heap and "
            f"{int(info.get('loader_file_kib', '0')) // 1024} MiB mapped libraries): "
            f"{info.get('attached')}",
        )

    def _latency(self) -> None:
        """Can the BPF sampler time requests (issue -> completion) per container? It needs
        the blkcg attribution (BTF) and the completion probe's arguments in BTF."""
        check = "latency (completion probe)"
        try:
            btf = BTF.from_file(self.btf_path)
            blkcg_layout(btf)
            latency_layout(btf)
        except BTFError as exc:
            self.add(
                check,
                Status.WARN,
                f"unavailable: {exc}; IO is still counted, latency metrics are absent",
            )
            return
        self.add(
            check,
            Status.OK,
            f"raw tracepoint {COMPLETE_TRACEPOINT} usable (from {self.btf_path}): per-container "
            "device service time; the wait a blk-throttle limit adds is not included",
        )

    def _api(self, config: Config) -> None:
        from kubernetes import client as k8s

        from diskguard.kube.client import KubeConfigError, make_api_client

        try:
            api_client = make_api_client(self.env)
        except KubeConfigError as exc:
            self.add("API server", Status.FAIL, str(exc))
            return
        try:
            info = k8s.VersionApi(api_client).get_code(_request_timeout=(5, 10))
            self.add(
                "API server",
                Status.OK,
                f"{api_client.configuration.host} answers, version {info.git_version}",
            )
            self._rbac(api_client, config)
        except Exception as exc:  # any failure to talk to it is the finding
            self.add(
                "API server",
                Status.FAIL,
                f"{api_client.configuration.host}: {type(exc).__name__}: {exc}"[:300],
            )
        finally:
            api_client.close()

    def _rbac(self, api_client: Any, config: Config) -> None:
        denied = denied_access(api_client, BASE_ACCESS)
        if denied:
            self.add(
                "RBAC",
                Status.FAIL,
                f"not allowed: {', '.join(map(str, denied))} (apply deploy/clusterrole.yaml)",
            )
        else:
            self.add("RBAC", Status.OK, "allowed: " + ", ".join(map(str, BASE_ACCESS)))
        wanted = required_access(config)[len(BASE_ACCESS) :]
        if not wanted:
            return
        denied = denied_access(api_client, wanted)
        if denied:
            self.add(
                "RBAC (smart limit)",
                Status.FAIL,
                f"SMART_LIMIT_ENABLED=true but not allowed: {', '.join(map(str, denied))}; "
                f"the agent runs without smart limit until deploy/components/smart-limit is "
                f"installed",
            )
        else:
            self.add("RBAC (smart limit)", Status.OK, "allowed: " + ", ".join(map(str, wanted)))


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # EACCES when not root: then it is unusable anyway
        return False


class _QuietLog:
    """The loader's log lines are not findings: the finding says what matters."""

    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


def run_doctor(env: Mapping[str, str], echo: Callable[[str], None], *, as_json: bool) -> int:
    findings = Doctor(env).run()
    if as_json:
        echo(
            json.dumps(
                [
                    {"check": f.check, "status": f.status.value, "detail": f.detail}
                    for f in findings
                ],
                indent=2,
            )
        )
    else:
        width = max(len(f.check) for f in findings)
        for f in findings:
            echo(f"{f.status.value.upper():<4}  {f.check:<{width}}  {f.detail}")
    return 1 if any(f.status is Status.FAIL for f in findings) else 0


def environ() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NODE_NAME", os.uname().nodename.lower())
    return env
