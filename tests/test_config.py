"""Env-var configuration: defaults, precedence, and start-up errors that name the variable."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.config import ConfigError, load_config, startup_warnings
from diskguard.logs import LogFormat
from diskguard.model import (
    CgroupDriver,
    CgroupVersion,
    LatencyMetrics,
    Runtime,
    SamplerKind,
)
from diskguard.policy.values import LimitSettings, Share


def test_defaults() -> None:
    c = load_config({"NODE_NAME": "node-1"})
    assert c.defaults == LimitSettings(riops=500, wiops=500, rbps=0, wbps=0)
    assert c.data_mounts == ("/data",)
    assert c.cgroup_root == "/sys/fs/cgroup"
    assert (c.cgroup_version, c.cgroup_driver, c.container_runtime) == (None,) * 3  # auto
    assert (c.sampler, c.log_format) == (SamplerKind.AUTO, LogFormat.TEXT)
    assert c.annotation_prefix == "iops-limit"
    assert c.resync_interval == 60.0
    assert c.exclusion.namespaces == frozenset({"kube-system"})
    assert "istio-proxy" in c.exclusion.keywords


def test_legacy_iops_fills_only_unset_directions() -> None:
    c = load_config(
        {"NODE_NAME": "n", "CONTAINER_IOPS_LIMIT": "300", "CONTAINER_WRITE_IOPS_LIMIT": "50"}
    )
    assert (c.defaults.riops, c.defaults.wiops) == (300, 50)


def test_values_are_trimmed_and_lists_ignore_empty_items() -> None:
    c = load_config(
        {
            "NODE_NAME": " n ",
            "DATA_MOUNT": " /data , ,/mnt/ssd ",
            "EXCLUDE_KEYWORDS": "a, ,b,",
            "EXCLUDE_NAMESPACES": "",
            "CONTAINER_READ_BPS_LIMIT": "10Mi",
            "RESYNC_INTERVAL": "0.5",
        }
    )
    assert c.node_name == "n"
    assert c.data_mounts == ("/data", "/mnt/ssd")
    assert c.exclusion.keywords == ("a", "b")
    assert c.exclusion.namespaces == frozenset()
    assert c.defaults.rbps == 10 * 2**20
    assert c.resync_interval == 0.5


@pytest.mark.parametrize(
    ("env", "variable", "form"),
    [
        ({}, "NODE_NAME", "required"),
        ({"NODE_NAME": "Bad_Name"}, "NODE_NAME", "DNS subdomain"),
        ({"CGROUP_VERSION": "v3"}, "CGROUP_VERSION", "auto | v1 | v2"),
        ({"CGROUP_DRIVER": "sysd"}, "CGROUP_DRIVER", "auto | cgroupfs | systemd"),
        ({"CONTAINER_RUNTIME": "podman"}, "CONTAINER_RUNTIME", "containerd | docker | cri-o"),
        ({"CGROUP_ROOT": "sys/fs"}, "CGROUP_ROOT", "absolute path"),
        ({"CONTAINER_READ_IOPS_LIMIT": "-1"}, "CONTAINER_READ_IOPS_LIMIT", "whole number"),
        ({"CONTAINER_IOPS_LIMIT": "fast"}, "CONTAINER_IOPS_LIMIT", "whole number"),
        ({"CONTAINER_WRITE_BPS_LIMIT": "1.5"}, "CONTAINER_WRITE_BPS_LIMIT", "quantity"),
        ({"DATA_MOUNT": "data"}, "DATA_MOUNT", "absolute paths"),
        ({"EXCLUDE_LABEL_SELECTOR": "app in (a"}, "EXCLUDE_LABEL_SELECTOR", "label selector"),
        ({"EXCLUDE_REGEX": "(("}, "EXCLUDE_REGEX", "regular expression"),
        ({"EXCLUDE_NAMESPACES": "Kube_System"}, "EXCLUDE_NAMESPACES", "namespace names"),
        ({"RESYNC_INTERVAL": "0"}, "RESYNC_INTERVAL", "positive duration such as 60s"),
        ({"RESYNC_INTERVAL": "nan"}, "RESYNC_INTERVAL", "plain number is seconds"),
        ({"RESYNC_INTERVAL": "-1m"}, "RESYNC_INTERVAL", "positive duration"),
        ({"RESYNC_INTERVAL": "1 minute"}, "RESYNC_INTERVAL", "positive duration"),
        ({"RESYNC_INTERVAL": "1h-30m"}, "RESYNC_INTERVAL", "positive duration"),  # not Go's
        ({"RESYNC_INTERVAL": "1h 30m"}, "RESYNC_INTERVAL", "positive duration"),
        ({"RESYNC_INTERVAL": "2d"}, "RESYNC_INTERVAL", "positive duration"),
        ({"RESYNC_INTERVAL": "9" * 40 + "h"}, "RESYNC_INTERVAL", "positive duration"),
        ({"RESYNC_INTERVAL": "1ns"}, "RESYNC_INTERVAL", "positive duration"),
        ({"SAMPLE_INTERVAL": "1" * 100 + "s"}, "SAMPLE_INTERVAL", "positive duration"),
        ({"SMART_LIMIT_HISTORY_WINDOW": "0s"}, "SMART_LIMIT_HISTORY_WINDOW", "is minutes"),
        ({"SMART_LIMIT_HISTORY_WINDOW": "1e300"}, "SMART_LIMIT_HISTORY_WINDOW", "at most 24h"),
        ({"SMART_LIMIT_ANNOTATION_PREFIX": "Bad/Prefix"}, "SMART_LIMIT_ANNOTATION_PREFIX", "DNS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "text | json"),
        ({"LATENCY_METRICS": "node"}, "LATENCY_METRICS", "container | pod | off"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "debug | info"),
    ],
)
def test_bad_values_name_the_variable_and_the_accepted_form(
    env: dict[str, str], variable: str, form: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"NODE_NAME": "n", **env} if variable != "NODE_NAME" else env)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}=")
    assert form in str(info.value)


def test_choices_become_enums_once() -> None:
    c = load_config(
        {
            "NODE_NAME": "n",
            "CGROUP_VERSION": "V2",
            "CGROUP_DRIVER": " systemd ",
            "CONTAINER_RUNTIME": "cri-o",
            "SAMPLER": "bpf",
            "LOG_FORMAT": "JSON",
            "LATENCY_METRICS": " Pod",
        }
    )
    assert c.latency_metrics is LatencyMetrics.POD
    assert (c.cgroup_version, c.cgroup_driver, c.container_runtime) == (
        CgroupVersion.V2,
        CgroupDriver.SYSTEMD,
        Runtime.CRIO,
    )
    assert (c.sampler, c.log_format) == (SamplerKind.BPF, LogFormat.JSON)
    auto = {"NODE_NAME": "n", "CGROUP_VERSION": "Auto", "CGROUP_DRIVER": "auto"}
    assert (load_config(auto).cgroup_version, load_config(auto).cgroup_driver) == (None, None)
    with pytest.raises(ConfigError) as info:
        load_config({"NODE_NAME": "n", "SAMPLER": "ebpf"})
    # The accepted form, not the enum's repr.
    assert str(info.value) == "SAMPLER='ebpf' is invalid: expected auto | bpf | cgroup"


@pytest.mark.parametrize(
    "variable",
    [
        "DATA_MOUNT_ALLOW_UNMOUNTED",
        "STATUS_LOCALHOST_ONLY",
        "SMART_LIMIT_ENABLED",
        "SMART_LIMIT_DRY_RUN",
        "KUBELET_SKIP_VERIFY",
        "KUBELET_POD_SOURCE",
    ],
)
def test_every_boolean_accepts_the_same_spellings(variable: str) -> None:
    def value(raw: str) -> object:
        c = load_config({"NODE_NAME": "n", variable: raw}, exists=lambda _: False)
        return {
            "DATA_MOUNT_ALLOW_UNMOUNTED": c.data_mount_allow_unmounted,
            "STATUS_LOCALHOST_ONLY": c.status_localhost_only,
            "SMART_LIMIT_ENABLED": c.smart.enabled,
            "SMART_LIMIT_DRY_RUN": c.smart.dry_run,
            "KUBELET_SKIP_VERIFY": c.kubelet.skip_verify,
            "KUBELET_POD_SOURCE": c.kubelet.pod_source,
        }[variable]

    for raw in ("true", "True", "1", "yes", "on", " ON "):
        assert value(raw) is True, raw
    for raw in ("false", "FALSE", "0", "no", "off"):
        assert value(raw) is False, raw
    with pytest.raises(
        ConfigError, match=rf"^{variable}='maybe' is invalid: expected true or false"
    ):
        value("maybe")


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "CGROUP_VERSION",
                "CONTAINER_IOPS_LIMIT",
                "CONTAINER_READ_BPS_LIMIT",
                "DATA_MOUNT",
                "EXCLUDE_LABEL_SELECTOR",
                "EXCLUDE_REGEX",
                "RESYNC_INTERVAL",
                "KUBELET_CGROUP_ROOT",
            ]
        ),
        st.text(max_size=30),
    )
)
def test_any_env_either_loads_or_raises_config_error(env: dict[str, str]) -> None:
    try:
        load_config({"NODE_NAME": "n", **env})
    except ConfigError as exc:
        assert exc.variable in env


# -- HTTP listener and secure defaults (issue #11, deploy hardening) -----------------------


@pytest.mark.parametrize(
    ("value", "host", "port", "every"),
    [
        (None, "", 2112, True),  # the default: every IPv6 and IPv4 address
        (":2112", "", 2112, True),
        ("0.0.0.0:9000", "0.0.0.0", 9000, True),
        ("[::]:9000", "::", 9000, True),
        ("127.0.0.1:0", "127.0.0.1", 0, False),
        ("[::1]:2112", "::1", 2112, False),
        (" [fd00::17]:80 ", "fd00::17", 80, False),
    ],
)
def test_http_addr_forms(value: str | None, host: str, port: int, every: bool) -> None:
    env = {"NODE_NAME": "n"} if value is None else {"NODE_NAME": "n", "HTTP_ADDR": value}
    address = load_config(env).http_addr
    assert (address.host, address.port, address.every_address) == (host, port, every)
    assert str(address).endswith(f":{port}")


@pytest.mark.parametrize("value", ["2112", "::1:2112", "[::1:2112", "[]:2112", ":99999", "a b:1"])
def test_bad_http_addr_names_the_accepted_form(value: str) -> None:
    with pytest.raises(ConfigError, match=r"HTTP_ADDR=.*\[::1\]:2112"):
        load_config({"NODE_NAME": "n", "HTTP_ADDR": value})


def test_status_localhost_only_defaults_to_true() -> None:
    assert load_config({"NODE_NAME": "n"}).status_localhost_only is True
    off = load_config({"NODE_NAME": "n", "STATUS_LOCALHOST_ONLY": "false"})
    assert off.status_localhost_only is False
    with pytest.raises(ConfigError, match=r"STATUS_LOCALHOST_ONLY='maybe'.*true or false"):
        load_config({"NODE_NAME": "n", "STATUS_LOCALHOST_ONLY": "maybe"})


def test_a_missing_ceiling_is_warned_about() -> None:
    (warning,) = startup_warnings(load_config({"NODE_NAME": "n"}))
    assert "LIMIT_CEILING_READ_IOPS" in warning and "LIMIT_CEILING_WRITE_BPS" in warning
    ceilings = {
        "LIMIT_CEILING_READ_IOPS": "4000",
        "LIMIT_CEILING_WRITE_IOPS": "4000",
        "LIMIT_CEILING_READ_BPS": "400Mi",
    }
    (warning,) = startup_warnings(load_config({"NODE_NAME": "n", **ceilings}))
    assert "LIMIT_CEILING_WRITE_BPS" in warning and "READ_IOPS" not in warning
    full = {**ceilings, "LIMIT_CEILING_WRITE_BPS": "1Gi"}
    assert startup_warnings(load_config({"NODE_NAME": "n", **full})) == ()


@pytest.mark.parametrize(
    ("variable", "value", "seconds"),
    [
        ("RESYNC_INTERVAL", "90", 90.0),  # a plain number keeps the documented unit
        ("RESYNC_INTERVAL", "1m30s", 90.0),
        ("SAMPLE_INTERVAL", "500ms", 0.5),
        ("SAMPLE_INTERVAL", "250000us", 0.25),
        ("SAMPLE_INTERVAL", ".5s", 0.5),
        ("SAMPLE_INTERVAL", " 2s ", 2.0),
        ("READINESS_WATCH_GRACE", "2m", 120.0),
        ("KUBELET_POLL_INTERVAL", "1.5s", 1.5),
        ("SMART_LIMIT_MONITOR_INTERVAL", "1h", 3600.0),
        ("SMART_LIMIT_HISTORY_WINDOW", "15", 900.0),  # minutes, as before durations
        ("SMART_LIMIT_HISTORY_WINDOW", "0.05", 3.0),
        ("SMART_LIMIT_HISTORY_WINDOW", "15m", 900.0),
        ("SMART_LIMIT_HISTORY_WINDOW", "90s", 90.0),
    ],
)
def test_intervals_accept_go_durations_and_plain_numbers(
    variable: str, value: str, seconds: float
) -> None:
    c = load_config({"NODE_NAME": "n", variable: value})
    got = {
        "RESYNC_INTERVAL": c.resync_interval,
        "SAMPLE_INTERVAL": c.sample_interval,
        "READINESS_WATCH_GRACE": c.readiness_watch_grace,
        "KUBELET_POLL_INTERVAL": c.kubelet.poll_interval,
        "SMART_LIMIT_MONITOR_INTERVAL": c.smart.monitor_interval,
        "SMART_LIMIT_HISTORY_WINDOW": c.smart.settings.window,
    }[variable]
    assert got == pytest.approx(seconds)


def test_smart_limit_tiers_default_to_the_single_window() -> None:
    c = load_config({"NODE_NAME": "n", "SMART_LIMIT_HISTORY_WINDOW": "15m"})
    [tier] = c.smart.tiers
    assert tier.window == 900.0 and tier.name == "default"
    assert (c.smart.remove_delay, c.smart.remove_check_interval) == (0.0, 60.0)
    graded = load_config(
        {
            "NODE_NAME": "n",
            "SMART_LIMIT_TIERS": (
                "window=60m,iops=50%,limit=25%obs; window=15m,iops=80%,limit=50%obs"
            ),
            "SMART_LIMIT_REMOVE_DELAY": "5m",
            "SMART_LIMIT_REMOVE_CHECK_INTERVAL": "30s",
        }
    )
    assert [t.name for t in graded.smart.tiers] == ["15m", "60m"]
    assert (graded.smart.remove_delay, graded.smart.remove_check_interval) == (300.0, 30.0)


def test_a_bad_tier_names_the_variable_and_what_is_wrong() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"NODE_NAME": "n", "SMART_LIMIT_TIERS": "window=15m,iops=80%"})
    assert info.value.variable == "SMART_LIMIT_TIERS"
    assert "no limit" in str(info.value) and "window=15m,iops=80%,bps=80%" in str(info.value)


# -- percentages of each disk's capacity -----------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "declared"),
    [
        ("CONTAINER_WRITE_IOPS_LIMIT", "SMART_LIMIT_DEVICE_IOPS"),
        ("CONTAINER_IOPS_LIMIT", "SMART_LIMIT_DEVICE_IOPS"),
        ("CONTAINER_READ_BPS_LIMIT", "SMART_LIMIT_DEVICE_BPS"),
        ("LIMIT_CEILING_READ_IOPS", "SMART_LIMIT_DEVICE_IOPS"),
        ("LIMIT_CEILING_WRITE_BPS", "SMART_LIMIT_DEVICE_BPS"),
    ],
)
def test_a_percentage_env_value_needs_the_declared_capacity(variable: str, declared: str) -> None:
    # The other unit's declared capacity does not do.
    other = ({"SMART_LIMIT_DEVICE_IOPS", "SMART_LIMIT_DEVICE_BPS"} - {declared}).pop()
    with pytest.raises(ConfigError) as info:
        load_config({"NODE_NAME": "n", variable: "25%", other: "1000"})
    assert info.value.variable == variable
    message = str(info.value)
    assert message.startswith(f"{variable}='25%' is invalid (a percentage needs {declared}")
    assert f"a percentage such as 25% with {declared} set" in message


def test_a_percentage_env_value_with_the_declared_capacity_is_accepted() -> None:
    c = load_config(
        {
            "NODE_NAME": "n",
            "SMART_LIMIT_DEVICE_IOPS": "20000",
            "SMART_LIMIT_DEVICE_BPS": "1Gi",
            "CONTAINER_IOPS_LIMIT": "5%",
            "CONTAINER_WRITE_IOPS_LIMIT": " 2.5% ",
            "CONTAINER_READ_BPS_LIMIT": "10Mi",
            "LIMIT_CEILING_WRITE_BPS": "50%",
            "LIMIT_CEILING_READ_IOPS": "4000",
        }
    )
    assert c.defaults == LimitSettings(
        riops=Share(Decimal(5)), wiops=Share(Decimal("2.5")), rbps=10 * 2**20, wbps=0
    )
    assert c.guardrails.ceilings == LimitSettings(riops=4000, wbps=Share(Decimal(50)))
    assert (c.smart.settings.device_iops, c.smart.settings.device_bps) == (20000, 2**30)


@pytest.mark.parametrize(
    ("env", "variable", "why"),
    [
        ({"CONTAINER_WRITE_IOPS_LIMIT": "0%"}, "CONTAINER_WRITE_IOPS_LIMIT", "above 0%"),
        ({"LIMIT_CEILING_WRITE_IOPS": "150%"}, "LIMIT_CEILING_WRITE_IOPS", "at most 100%"),
        ({"CONTAINER_READ_BPS_LIMIT": "1.234%"}, "CONTAINER_READ_BPS_LIMIT", "two decimals"),
        # The declared capacity itself, and the smart limit's amounts, stay absolute.
        ({"SMART_LIMIT_DEVICE_IOPS": "50%"}, "SMART_LIMIT_DEVICE_IOPS", "whole number"),
        ({"SMART_LIMIT_MIN_BPS": "1%"}, "SMART_LIMIT_MIN_BPS", "quantity"),
    ],
)
def test_bad_percentages_are_refused_with_the_reason(
    env: dict[str, str], variable: str, why: str
) -> None:
    declared = {"SMART_LIMIT_DEVICE_IOPS": "1000", "SMART_LIMIT_DEVICE_BPS": "1Gi"}
    with pytest.raises(ConfigError) as info:
        load_config({"NODE_NAME": "n", **declared, **env})
    assert info.value.variable == variable
    assert why in str(info.value)


def test_percentage_ceilings_count_as_ceilings() -> None:
    env = {f"LIMIT_CEILING_{s}": "80%" for s in ("READ_IOPS", "WRITE_IOPS", "READ_BPS")}
    env |= {"LIMIT_CEILING_WRITE_BPS": "1Gi", "SMART_LIMIT_DEVICE_IOPS": "1000"}
    env["SMART_LIMIT_DEVICE_BPS"] = "2Gi"
    assert not startup_warnings(load_config({"NODE_NAME": "n", **env}))
