"""Configuration from environment variables, validated once at start-up.

Every variable is parsed here; a bad value raises ConfigError naming the variable, the
value and the accepted form, and start-up stops. Nothing else in diskguard reads os.environ.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import durationpy

from diskguard.logs import LogFormat
from diskguard.model import (
    CgroupDriver,
    CgroupVersion,
    LatencyMetrics,
    LimitField,
    LimitUnit,
    Runtime,
    SamplerKind,
)
from diskguard.policy.exclusion import ExclusionFilter, FilterConfigError
from diskguard.policy.names import is_dns1123_label, is_dns1123_subdomain
from diskguard.policy.resolve import Guardrails
from diskguard.policy.shares import DECLARED_VARIABLE
from diskguard.policy.smart import SmartSettings
from diskguard.policy.tiers import MAX_WINDOW, Tier, parse_tiers, single_tier
from diskguard.policy.values import (
    LimitSettings,
    LimitValue,
    Share,
    parse_bps,
    parse_bps_value,
    parse_iops,
    parse_iops_value,
)

T = TypeVar("T")

DEFAULT_EXCLUDE_KEYWORDS = "pause,istio-proxy,psmdb,kube-system,koordinator,apisix"


class ConfigError(ValueError):
    """A variable with a bad value: the message names it, the value and the accepted form."""

    def __init__(self, variable: str, value: str, accepted: str, problem: str = "") -> None:
        why = f" ({problem})" if problem else ""
        super().__init__(f"{variable}={value!r} is invalid{why}: expected {accepted}")
        self.variable = variable
        self.value = value
        self.accepted = accepted
        self.problem = problem


# The kubelet's read-only HTTPS API (diskguard/kube/kubelet.py talks to it).
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
KUBELET_DEFAULT_PORT = 10250
KUBELET_DEFAULT_POLL_INTERVAL = 5.0
KUBELET_REQUEST_TIMEOUT = 10.0


@attrs.frozen
class KubeletSettings:
    host: str = "localhost"
    port: int = KUBELET_DEFAULT_PORT
    # None: verify against the system trust store (no cluster CA found).
    ca_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    token_path: str | None = None
    skip_verify: bool = False
    pod_source: bool = False
    poll_interval: float = KUBELET_DEFAULT_POLL_INTERVAL
    timeout: float = KUBELET_REQUEST_TIMEOUT

    @property
    def base_url(self) -> str:
        host = self.host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"https://{host}:{self.port}"


@attrs.frozen
class SmartConfig:
    enabled: bool = False
    monitor_interval: float = 60.0
    settings: SmartSettings = attrs.field(factory=lambda: SmartSettings(window=600.0))
    # SMART_LIMIT_TIERS, shortest window first; unset: the single window above as one tier.
    tiers: tuple[Tier, ...] = attrs.field(
        default=attrs.Factory(lambda self: (single_tier(self.settings),), takes_self=True)
    )
    remove_delay: float = 0.0  # every tier calm this long before the limit is lifted
    remove_check_interval: float = 60.0
    dry_run: bool = False
    use_kubelet_api: bool = False
    patches_per_minute: int = 30


@attrs.frozen
class ListenAddress:
    """Where the HTTP endpoints listen. An empty host is every address: IPv6 and IPv4 on one
    dual-stack socket, or IPv4 alone where the node has no IPv6."""

    host: str  # "" = every address; else an IP address or name, IPv6 without brackets
    port: int

    @property
    def every_address(self) -> bool:
        return self.host in ("", "::", "0.0.0.0")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class Config:
    node_name: str
    cgroup_root: str = "/sys/fs/cgroup"
    # None = auto: detected (version), either layout (driver), the containerID's scheme (runtime).
    cgroup_version: CgroupVersion | None = None
    cgroup_driver: CgroupDriver | None = None
    container_runtime: Runtime | None = None
    kubelet_cgroup_root: str = "/"
    # CONTAINER_*_LIMIT: numbers, or percentages of each disk's capacity.
    defaults: LimitSettings = attrs.field(factory=lambda: LimitSettings(500, 500, 0, 0))
    data_mounts: tuple[str, ...] = ("/data",)
    # A data path that is a plain directory (no mount) is intended: single-disk nodes.
    data_mount_allow_unmounted: bool = False
    state_dir: str = "/var/lib/diskguard"  # the node-state directory (diskguard/node/state.py)
    exclusion: ExclusionFilter = attrs.field(factory=lambda: default_exclusion())
    annotation_prefix: str = "iops-limit"
    resync_interval: float = 60.0
    guardrails: Guardrails = attrs.field(factory=Guardrails)
    sampler: SamplerKind = SamplerKind.AUTO
    sample_interval: float = 1.0
    # The observed capacity: the highest rate each data disk sustained over this window.
    capacity_observed_window: float = 60.0
    smart: SmartConfig = attrs.field(factory=lambda: SmartConfig())
    kubelet: KubeletSettings = attrs.field(factory=KubeletSettings)
    http_addr: ListenAddress = ListenAddress("", 2112)
    status_localhost_only: bool = True
    latency_metrics: LatencyMetrics = LatencyMetrics.CONTAINER
    # An IOLimitSaturated Event after this many consecutive sampling intervals at >= 95 %
    # of a limit (0: none), at most one per container per cooldown.
    saturation_event_intervals: int = 60
    saturation_event_cooldown: float = 3600.0
    readiness_watch_grace: float = 60.0
    log_level: str = "info"
    log_format: LogFormat = LogFormat.TEXT


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        low = value.strip().lower()
        if low not in allowed:
            raise ValueError
        return low

    return parse


E = TypeVar("E", bound=enum.Enum)


def _enum_or_auto(kind: type[E]) -> Callable[[str], E | None]:
    """`auto` (None) or one of the enum's values, any case."""

    def parse(value: str) -> E | None:
        low = value.strip().lower()
        if low == "auto":
            return None
        return _enum(kind)(low)

    return parse


def _enum(kind: type[E]) -> Callable[[str], E]:
    def parse(value: str) -> E:
        try:
            return kind(value.strip().lower())
        except ValueError:
            raise ValueError from None  # the accepted form says it; not the enum's repr

    return parse


def _accepted(kind: type[enum.Enum], auto: bool = False) -> str:
    return " | ".join((["auto"] if auto else []) + [str(member.value) for member in kind])


# Bounds the text handed to the duration parser (an env var is the administrator's, but a
# typo should still meet a short, clear error).
MAX_DURATION_TEXT = 64
# Go's time.ParseDuration grammar, checked first: durationpy alone would also take
# separators between the parts (`1h-30m`, `1h 30m` sum to 90 minutes) and units Go has not
# (`d`, `w`, `y`).
_GO_DURATION = re.compile(r"\+?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")


def _duration(unit: float, *, zero: bool = False) -> Callable[[str], float]:
    """Seconds, from a Go-style duration as Kubernetes writes them (`30s`, `10m`, `1h30m`,
    `500ms`; parsed by durationpy) or a plain number in the variable's documented unit."""

    def parse(value: str) -> float:
        text = value.strip()
        if len(text) > MAX_DURATION_TEXT:
            raise ValueError
        try:
            number = float(text) * unit
        except ValueError:
            if not _GO_DURATION.fullmatch(text):
                raise
            number = durationpy.from_str(text).total_seconds()  # DurationError: a ValueError
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            raise ValueError
        return number

    return parse


# Public: SMART_LIMIT_TIERS windows, the bench and the tests parse durations with it too.
parse_seconds = _duration(1.0)


def _at_most(bound: float, parse: Callable[[str], float]) -> Callable[[str], float]:
    def bounded(value: str) -> float:
        number = parse(value)
        if number > bound:
            raise ValueError
        return number

    return bounded


def _form(example: str, unit: str = "seconds") -> str:
    return f"a positive duration such as {example} (a plain number is {unit}, fractions allowed)"


def _path_list(value: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in value.split(",") if p.strip())
    if not items or any(not p.startswith("/") for p in items):
        raise ValueError
    return items


def _absolute_path(value: str) -> str:
    value = value.strip()
    if not value.startswith("/") or "\0" in value:
        raise ValueError
    return value


# Every boolean variable accepts the same spellings, in any case (README: Configuration).
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _bool(value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError


def _fraction(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or not 0 < number <= 1:
        raise ValueError
    return number


def _at_most_an_hour(value: str) -> float:
    """A window the agent keeps every sample of: bounded (3,600 at a 1 s interval)."""
    seconds = parse_seconds(value)
    if seconds > 3600:
        raise ValueError
    return seconds


def _count_or_zero(value: str) -> int:
    if not value.strip().isdigit() or int(value) > 1_000_000:
        raise ValueError
    return int(value)


def _count(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError
    return int(value)


def _smart(get: Any, iops_form: str, bps_form: str) -> SmartConfig:
    fraction = "a fraction in (0, 1], such as 0.8"
    computed = " (0 = computed from the observed IO)"
    # Minutes when a plain number, as before durations were accepted.
    window = get(
        "SMART_LIMIT_HISTORY_WINDOW",
        _at_most(MAX_WINDOW, _duration(60.0)),
        _form("10m", "minutes") + ", at most 24h",
        600.0,
    )
    settings = SmartSettings(
        window=window,
        io_threshold=get("SMART_LIMIT_HIGH_IO_THRESHOLD", _fraction, fraction, 0.8),
        bps_threshold=get("SMART_LIMIT_HIGH_BPS_THRESHOLD", _fraction, fraction, 0.8),
        remove_threshold=get("SMART_LIMIT_REMOVE_THRESHOLD", _fraction, fraction, 0.5),
        auto_iops=get("SMART_LIMIT_AUTO_IOPS", parse_iops, iops_form + computed, 0),
        auto_bps=get("SMART_LIMIT_AUTO_BPS", parse_bps, bps_form + computed, 0),
        device_iops=get("SMART_LIMIT_DEVICE_IOPS", parse_iops, iops_form, 0),
        device_bps=get("SMART_LIMIT_DEVICE_BPS", parse_bps, bps_form, 0),
        min_iops=get("SMART_LIMIT_MIN_IOPS", parse_iops, iops_form, 10),
        min_bps=get("SMART_LIMIT_MIN_BPS", parse_bps, bps_form, 1 << 20),
    )
    tiers = get(
        "SMART_LIMIT_TIERS",
        lambda text: parse_tiers(text, parse_seconds),
        "tiers separated by ';', each key=value pairs: window=15m,iops=80%,bps=80%,"
        "limit=50%obs (README: Smart limit tiers)",
        (single_tier(settings),),
    )
    return SmartConfig(
        enabled=get("SMART_LIMIT_ENABLED", _bool, "true or false", False),
        tiers=tiers,
        remove_delay=get(
            "SMART_LIMIT_REMOVE_DELAY", _duration(1.0, zero=True), _form("5m") + " or 0", 0.0
        ),
        remove_check_interval=get(
            "SMART_LIMIT_REMOVE_CHECK_INTERVAL", parse_seconds, _form("1m"), 60.0
        ),
        monitor_interval=get(
            "SMART_LIMIT_MONITOR_INTERVAL",
            parse_seconds,
            _form("1m"),
            60.0,
        ),
        settings=settings,
        dry_run=get("SMART_LIMIT_DRY_RUN", _bool, "true or false", False),
        use_kubelet_api=get("SMART_LIMIT_USE_KUBELET_API", _bool, "true or false", False),
        patches_per_minute=get(
            "SMART_LIMIT_MAX_PATCHES_PER_MINUTE", _count, "a positive whole number", 30
        ),
    )


def _http_addr(value: str) -> ListenAddress:
    """`:2112` (every address, dual-stack), `127.0.0.1:2112`, `[::1]:2112`."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError
    if host.startswith("[") != host.endswith("]") or " " in host:
        raise ValueError
    if host.startswith("["):
        host = host[1:-1]
        if not host or "[" in host or "]" in host:
            raise ValueError
    elif ":" in host:
        raise ValueError  # an IPv6 address needs brackets: [::1]:2112
    return ListenAddress(host, int(port))


_NO_NAMESPACES: tuple[str, ...] = ()


def _namespace_list(value: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if any(not is_dns1123_label(item) for item in items):
        raise ValueError
    return items


def _prefix(value: str) -> str:
    value = value.strip()
    if not is_dns1123_subdomain(value):
        raise ValueError
    return value


def load_config(
    env: Mapping[str, str], *, exists: Callable[[str], bool] = os.path.exists
) -> Config:
    """Parse every variable; `exists` decides whether the in-cluster kubelet defaults apply."""

    def get(name: str, parse: Callable[[str], T], accepted: str, default: T) -> T:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw)
        except (ValueError, re.error) as exc:
            # Parsers that know more than "wrong form" (limit values) say it.
            raise ConfigError(name, raw, accepted, str(exc)) from None

    node_name = env.get("NODE_NAME", "").strip()
    if not is_dns1123_subdomain(node_name):
        raise ConfigError(
            "NODE_NAME", node_name, "the node's name (a DNS subdomain); it is required"
        )

    iops_form = "a non-negative whole number of IO operations/s (0 = unlimited)"
    bps_form = "a non-negative number of bytes/s or a quantity such as 10Mi (0 = unlimited)"
    # Parsed first: a percentage default or ceiling needs its declared capacity.
    smart = _smart(get, iops_form, bps_form)
    declared = {
        LimitUnit.IOPS: smart.settings.device_iops,
        LimitUnit.BPS: smart.settings.device_bps,
    }

    def limit(name: str, unit: LimitUnit, default: LimitValue, no_limit: str) -> LimitValue:
        """A default or ceiling: a number, or a percentage of each disk's capacity."""
        absolute = (iops_form if unit is LimitUnit.IOPS else bps_form).replace(
            "unlimited", no_limit
        )
        variable = DECLARED_VARIABLE[unit]
        accepted = f"{absolute}, or a percentage of each disk's capacity such as 25%"
        parse = parse_iops_value if unit is LimitUnit.IOPS else parse_bps_value
        value = get(name, parse, accepted, default)
        if isinstance(value, Share) and not declared[unit]:
            # The absolute fallback: a disk not profiled yet still gets a number, so a
            # default always applies and a ceiling is never dropped.
            raise ConfigError(
                name,
                env.get(name, ""),
                f"{absolute}, or a percentage such as 25% with {variable} set",
                f"a percentage needs {variable}, the declared capacity used for data disks "
                "`diskguard profile` has not measured",
            )
        return value

    legacy_iops = limit("CONTAINER_IOPS_LIMIT", LimitUnit.IOPS, 500, "unlimited")
    defaults = LimitSettings(
        riops=limit("CONTAINER_READ_IOPS_LIMIT", LimitUnit.IOPS, legacy_iops, "unlimited"),
        wiops=limit("CONTAINER_WRITE_IOPS_LIMIT", LimitUnit.IOPS, legacy_iops, "unlimited"),
        rbps=limit("CONTAINER_READ_BPS_LIMIT", LimitUnit.BPS, 0, "unlimited"),
        wbps=limit("CONTAINER_WRITE_BPS_LIMIT", LimitUnit.BPS, 0, "unlimited"),
    )

    exclusion = _exclusion(env)
    guardrails = Guardrails(
        ceilings=LimitSettings(
            **{
                f.value: limit(f"LIMIT_CEILING_{f.env_suffix}", f.unit, 0, "no ceiling")
                for f in LimitField
            }
        ),
        allow_unlimited_namespaces=frozenset(
            get(
                "ALLOW_UNLIMITED_NAMESPACES",
                _namespace_list,
                "a comma-separated list of namespace names",
                _NO_NAMESPACES,
            )
        ),
    )

    kubelet = _kubelet(env, get, exists)

    return Config(
        node_name=node_name,
        kubelet=kubelet,
        cgroup_root=get("CGROUP_ROOT", _absolute_path, "an absolute path", "/sys/fs/cgroup"),
        cgroup_version=get(
            "CGROUP_VERSION",
            _enum_or_auto(CgroupVersion),
            _accepted(CgroupVersion, auto=True),
            None,
        ),
        cgroup_driver=get(
            "CGROUP_DRIVER",
            _enum_or_auto(CgroupDriver),
            _accepted(CgroupDriver, auto=True),
            None,
        ),
        container_runtime=get(
            "CONTAINER_RUNTIME",
            _enum_or_auto(Runtime),
            _accepted(Runtime, auto=True),
            None,
        ),
        kubelet_cgroup_root=get(
            "KUBELET_CGROUP_ROOT", _absolute_path, "an absolute cgroup path such as /", "/"
        ),
        defaults=defaults,
        data_mounts=get(
            "DATA_MOUNT", _path_list, "a comma-separated list of absolute paths", ("/data",)
        ),
        data_mount_allow_unmounted=get("DATA_MOUNT_ALLOW_UNMOUNTED", _bool, "true or false", False),
        state_dir=get("STATE_DIR", _absolute_path, "an absolute path", "/var/lib/diskguard"),
        exclusion=exclusion,
        guardrails=guardrails,
        annotation_prefix=get(
            "SMART_LIMIT_ANNOTATION_PREFIX",
            _prefix,
            "an annotation prefix that is a DNS subdomain, such as iops-limit",
            "iops-limit",
        ),
        resync_interval=get("RESYNC_INTERVAL", parse_seconds, _form("60s"), 60.0),
        sampler=get("SAMPLER", _enum(SamplerKind), _accepted(SamplerKind), SamplerKind.AUTO),
        sample_interval=get("SAMPLE_INTERVAL", parse_seconds, _form("1s"), 1.0),
        capacity_observed_window=get(
            "CAPACITY_OBSERVED_WINDOW", _at_most_an_hour, _form("1m") + ", at most 1h", 60.0
        ),
        smart=smart,
        http_addr=get(
            "HTTP_ADDR",
            _http_addr,
            "[host]:port such as :2112 (every address), 127.0.0.1:2112 or [::1]:2112",
            ListenAddress("", 2112),
        ),
        status_localhost_only=get("STATUS_LOCALHOST_ONLY", _bool, "true or false", True),
        saturation_event_intervals=get(
            "SATURATION_EVENT_INTERVALS", _count_or_zero, "a whole number (0 = no Events)", 60
        ),
        saturation_event_cooldown=get(
            "SATURATION_EVENT_COOLDOWN", parse_seconds, _form("1h"), 3600.0
        ),
        latency_metrics=get(
            "LATENCY_METRICS",
            _enum(LatencyMetrics),
            _accepted(LatencyMetrics),
            LatencyMetrics.CONTAINER,
        ),
        readiness_watch_grace=get("READINESS_WATCH_GRACE", parse_seconds, _form("60s"), 60.0),
        log_level=get(
            "LOG_LEVEL",
            _choice(("debug", "info", "warning", "error")),
            "debug | info | warning | error",
            "info",
        ),
        log_format=get("LOG_FORMAT", _enum(LogFormat), _accepted(LogFormat), LogFormat.TEXT),
    )


def _kubelet_host(value: str) -> str:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise ValueError
    return value.lower()


def _port(value: str) -> int:
    try:
        port = int(value.strip())
    except ValueError:
        raise ValueError from None  # the accepted form says it
    if not 1 <= port <= 65535:
        raise ValueError
    return port


# A name the URL can carry as is: DNS labels, or an IP literal (checked separately).
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*")


def _kubelet(env: Mapping[str, str], get: Any, exists: Callable[[str], bool]) -> KubeletSettings:
    path_form = "an absolute path to a file"
    cert = get("KUBELET_CLIENT_CERT_PATH", _absolute_path, path_form, None)
    key = get("KUBELET_CLIENT_KEY_PATH", _absolute_path, path_form, None)
    if (cert is None) != (key is None):
        missing, given = (
            ("KUBELET_CLIENT_KEY_PATH", "KUBELET_CLIENT_CERT_PATH")
            if key is None
            else ("KUBELET_CLIENT_CERT_PATH", "KUBELET_CLIENT_KEY_PATH")
        )
        raise ConfigError(
            missing,
            env.get(missing, ""),
            f"{path_form}, set together with {given}",
            f"{given} is set",
        )
    return KubeletSettings(
        host=get(
            "KUBELET_HOST",
            _kubelet_host,
            "a host name or IP address (no scheme, no port), such as localhost or 10.0.0.5",
            "localhost",
        ),
        port=get("KUBELET_PORT", _port, "a TCP port in 1..65535", KUBELET_DEFAULT_PORT),
        ca_path=get(
            "KUBELET_CA_PATH",
            _absolute_path,
            path_form,
            IN_CLUSTER_CA if exists(IN_CLUSTER_CA) else None,
        ),
        client_cert_path=cert,
        client_key_path=key,
        token_path=get(
            "KUBELET_TOKEN_PATH",
            _absolute_path,
            path_form,
            IN_CLUSTER_TOKEN if exists(IN_CLUSTER_TOKEN) else None,
        ),
        skip_verify=get("KUBELET_SKIP_VERIFY", _bool, "true or false", False),
        pod_source=get("KUBELET_POD_SOURCE", _bool, "true or false", False),
        poll_interval=get(
            "KUBELET_POLL_INTERVAL",
            parse_seconds,
            _form("5s"),
            KUBELET_DEFAULT_POLL_INTERVAL,
        ),
    )


_FILTER_VARIABLES = {
    "keywords": ("EXCLUDE_KEYWORDS", "a comma-separated list of substrings"),
    "namespaces": ("EXCLUDE_NAMESPACES", "a comma-separated list of namespace names"),
    "label_selector": (
        "EXCLUDE_LABEL_SELECTOR",
        "a Kubernetes label selector such as 'app in (db,cache),!canary'",
    ),
    "regex": ("EXCLUDE_REGEX", "a regular expression matched against namespace/pod/container"),
}
_FILTER_DEFAULTS = {
    "EXCLUDE_KEYWORDS": DEFAULT_EXCLUDE_KEYWORDS,
    "EXCLUDE_NAMESPACES": "kube-system",
}


def _exclusion(env: Mapping[str, str]) -> ExclusionFilter:
    raw = {
        var: env.get(var, _FILTER_DEFAULTS.get(var, "")) for var, _ in _FILTER_VARIABLES.values()
    }
    try:
        return ExclusionFilter.from_strings(*raw.values())
    except FilterConfigError as exc:
        variable, accepted = _FILTER_VARIABLES[exc.field]
        problem = str(exc).split(": ", 1)[1]
        raise ConfigError(variable, raw[variable], accepted, problem) from None


def default_exclusion() -> ExclusionFilter:
    return _exclusion({})


def startup_warnings(config: Config) -> tuple[str, ...]:
    """What is allowed but unsafe in this configuration, said at start-up and in /status."""
    ceilings = config.guardrails.ceilings
    missing = [f"LIMIT_CEILING_{f.env_suffix}" for f in LimitField if not ceilings.get(f)]
    if not missing:
        return ()
    return (
        f"no ceiling configured ({', '.join(missing)} unset or 0): any tenant who may "
        f"annotate a pod can lift its own limits there (an annotation of 0 means unlimited); "
        f"deploy/ ships ceilings for all four",
    )


class _RecordingEnv(dict[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self, base: Mapping[str, str]) -> None:
        super().__init__(base)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def known_variables() -> frozenset[str]:
    """Every env var `load_config` reads (plus the kubernetes client's), found by running it.

    Deploy manifests are checked against this, so a misspelt variable in a manifest fails a
    test instead of being silently ignored on the node.
    """
    env = _RecordingEnv({"NODE_NAME": "probe"})
    load_config(env)
    return frozenset(env.asked | {"KUBECONFIG"})
