"""Env-var configuration: defaults, precedence, and start-up errors that name the variable."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.config import ConfigError, load_config
from diskguard.model import IOLimits


def test_defaults() -> None:
    c = load_config({"NODE_NAME": "node-1"})
    assert c.defaults == IOLimits(riops=500, wiops=500, rbps=0, wbps=0)
    assert c.data_mounts == ("/data",)
    assert c.cgroup_root == "/sys/fs/cgroup"
    assert (c.cgroup_version, c.cgroup_driver, c.container_runtime) == ("auto",) * 3
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
        ({"RESYNC_INTERVAL": "0"}, "RESYNC_INTERVAL", "positive number of seconds"),
        ({"RESYNC_INTERVAL": "nan"}, "RESYNC_INTERVAL", "positive number of seconds"),
        ({"SMART_LIMIT_ANNOTATION_PREFIX": "Bad/Prefix"}, "SMART_LIMIT_ANNOTATION_PREFIX", "DNS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "text | json"),
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
