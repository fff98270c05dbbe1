"""deploy/grafana/diskguard-dashboard.json: well formed for import, every query on the
chosen data source, valid PromQL (promtool) over metrics diskguard exports."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import promtool
from .dashboard import (
    dashboard_queries,
    load_dashboard,
    panels,
    substitute,
    target_exprs,
    variable_selectors,
)
from .metric_names import exported_metrics, metric_names

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What the dashboard is for (README "Dashboard"): each must be on it.
SHOWN = {
    "diskguard_container_io_ops_total",
    "diskguard_container_io_bytes_total",
    "diskguard_container_io_latency_seconds_bucket",
    "diskguard_container_limit_iops",
    "diskguard_container_limit_bytes_per_second",
    "diskguard_container_io_saturation",
    "diskguard_container_io_saturated_seconds_total",
    "diskguard_container_io_pressure_waiting_seconds_total",
    "diskguard_smart_limit_active",
    "diskguard_smart_limit_iops",
    "diskguard_smart_limit_bytes_per_second",
    "diskguard_smart_limit_patches_total",
    "diskguard_ready",
    "diskguard_watch_failing",
    "diskguard_sampler_info",
    "diskguard_sampler_pass_duration_seconds_bucket",
    "diskguard_events_posted_total",
    "diskguard_events_dropped_total",
}


def _data_panels() -> list[dict[str, Any]]:
    return [p for p in panels(load_dashboard()) if p["type"] != "row"]


def test_the_dashboard_is_importable_as_is() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "diskguard" and dashboard["id"] is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "node", "namespace", "pod"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(1)


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    for panel in _data_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
    for variable in load_dashboard()["templating"]["list"][1:]:
        assert variable["datasource"] == DATASOURCE, variable["name"]


def test_every_rate_window_is_the_rate_interval() -> None:
    """Grafana's $__rate_interval is at least four scrape intervals: a fixed window can be
    shorter than two scrapes at a zoomed-in step, and the graph goes blank."""
    for expr in target_exprs(load_dashboard()):
        windows = re.findall(r"\[([^\]]*)\]", expr)
        assert set(windows) <= {"$__rate_interval"}, expr
        assert windows or "rate(" not in expr, expr


def test_the_latency_heatmap_reads_the_buckets() -> None:
    (heatmap,) = [p for p in _data_panels() if p["type"] == "heatmap"]
    (target,) = heatmap["targets"]
    assert target["format"] == "heatmap" and "sum by (le)" in target["expr"]
    assert heatmap["options"]["calculate"] is False  # the buckets are the kernel's


def test_the_dashboard_shows_what_it_is_for_and_only_exported_metrics() -> None:
    used: set[str] = set()
    for expr in [*target_exprs(load_dashboard()), *variable_selectors().values()]:
        used |= metric_names(expr)
    assert used >= SHOWN, sorted(SHOWN - used)
    assert used <= exported_metrics(), sorted(used - exported_metrics())


def _check_as_recording_rules(queries: list[str], path: Path) -> None:
    rules = [{"record": f"dashboard_query_{i}", "expr": q} for i, q in enumerate(queries)]
    promtool.check_rules(promtool.write_rules(path, {"groups": [{"name": "dash", "rules": rules}]}))


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    queries = [*dashboard_queries(), *variable_selectors().values()]
    assert all("$" not in q for q in queries), queries
    _check_as_recording_rules(queries, tmp_path / "dashboard.yaml")


def test_a_broken_query_is_caught(tmp_path: Path) -> None:
    broken = dashboard_queries()[0].replace(")", "", 1)
    with pytest.raises(AssertionError, match="dashboard_query_0"):
        _check_as_recording_rules([broken], tmp_path / "broken.yaml")


def test_queries_take_other_values_and_refuse_unknown_variables() -> None:
    one_pod = {
        "__rate_interval": "2m",
        "node": "10.0.0.1:2112",
        "namespace": "shop",
        "pod": "web-0",
    }
    queries = dashboard_queries(one_pod)
    assert any('pod=~"web-0"' in q and "[2m]" in q for q in queries)
    with pytest.raises(KeyError, match=r"\$pod"):
        substitute('x{pod=~"$pod"}', {"node": ".*"})


# Ten minutes of one agent's series, as the PodMonitor stores them: the agent's own with its
# pod's labels, the per-container ones with the monitored container's.
AGENT = 'instance="10.0.0.1:2112", namespace="diskguard-system", pod="diskguard-a"'
CONTAINER = (
    'instance="10.0.0.1:2112", namespace="shop", pod="web-0", container="app", '
    'device="nvme0n1", major="259", minor="0", direction="write"'
)
POD = 'instance="10.0.0.1:2112", namespace="shop", pod="web-0"'
BUILD = 'version="0.2.0", python="3.11.2", cgroup_version="v2"'
SERIES = {
    f"diskguard_build_info{{{AGENT}, {BUILD}}}": "1x10",
    f"diskguard_ready{{{AGENT}}}": "1x10",
    f'diskguard_watch_failing{{{AGENT}, resource="pods"}}': "0x10",
    f'diskguard_sampler_info{{{AGENT}, kind="bpf", degraded="false"}}': "1x10",
    f'diskguard_sampler_pass_duration_seconds_bucket{{{AGENT}, le="0.01"}}': "0+60x10",
    f'diskguard_sampler_pass_duration_seconds_bucket{{{AGENT}, le="+Inf"}}': "0+60x10",
    f"diskguard_events_posted_total{{{AGENT}}}": "0+2x10",
    f"diskguard_events_failed_total{{{AGENT}}}": "0x10",
    f"diskguard_events_dropped_total{{{AGENT}}}": "0x10",
    f"diskguard_container_io_ops_total{{{CONTAINER}}}": "0+3000x10",
    f"diskguard_container_io_bytes_total{{{CONTAINER}}}": "0+30000000x10",
    f'diskguard_container_limit_iops{{{CONTAINER}, source="annotation"}}': "100x10",
    f'diskguard_container_limit_bytes_per_second{{{CONTAINER}, source="annotation"}}': "1000000x10",
    f'diskguard_container_io_latency_seconds_bucket{{{CONTAINER}, le="0.001024"}}': "0+3000x10",
    f'diskguard_container_io_latency_seconds_bucket{{{CONTAINER}, le="+Inf"}}': "0+3000x10",
    f"diskguard_container_io_saturation{{{CONTAINER}}}": "1x10",
    f"diskguard_container_io_saturated_seconds_total{{{CONTAINER}}}": "0+60x10",
    f'diskguard_container_io_pressure_waiting_seconds_total{{{POD}, container="app"}}': "0+30x10",
    f'diskguard_smart_limit_active{{{POD}, tier="default"}}': "1x10",
    f"diskguard_smart_limit_iops{{{POD}}}": "50x10",
    f"diskguard_smart_limit_bytes_per_second{{{POD}}}": "500000x10",
    f'diskguard_smart_limit_patches_total{{{AGENT}, outcome="apply"}}': "0+1x10",
}


def test_every_query_shows_data_for_an_agents_series(tmp_path: Path) -> None:
    """No query joins or groups on a label the series do not have: each answers."""
    queries = [*dashboard_queries(), *variable_selectors().values()]
    tests = {
        "rule_files": ["rules.yaml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in SERIES.items()],
                "promql_expr_test": [
                    {
                        "expr": f"count({q}) > bool 0",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                    for q in queries
                ],
            }
        ],
    }
    promtool.write_rules(tmp_path / "rules.yaml", {"groups": []})
    (tmp_path / "queries-test.yaml").write_text(yaml.safe_dump(tests))
    done = promtool.run(["test", "rules", "queries-test.yaml"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
