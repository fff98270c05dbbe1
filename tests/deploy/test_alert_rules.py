"""The example alert rules (components/podmonitor's PrometheusRule): what they say, that
promtool accepts them, and that each fires on the series it is about and stays quiet on
the ones beside them (tests/deploy/data/alert-rules-test.yaml)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from . import promtool
from .metric_names import exported_metrics, metric_names

UNIT_TESTS = Path(__file__).parent / "data" / "alert-rules-test.yaml"
ALERTS = {
    "DiskguardAgentNotReady",
    "DiskguardWatchFailing",
    "DiskguardSamplerDegraded",
    "DiskguardEventsDropped",
    "DiskguardContainerAtIOLimit",
    "DiskguardContainerDiskLatencyHigh",
}
SEVERITIES = {"info", "warning", "critical"}


def _rules() -> list[dict[str, Any]]:
    return [r for g in promtool.alert_rules()["groups"] for r in g["rules"]]


def _promtool_test(tmp_path: Path, rules: dict[str, Any], tests: Path | str) -> str:
    """Runs `promtool test rules` on `tests` (a file, or its text) against `rules`;
    returns promtool's output and asserts nothing."""
    promtool.write_rules(tmp_path / "rules.yaml", rules)
    target = tmp_path / "unit-tests.yaml"
    if isinstance(tests, Path):
        shutil.copyfile(tests, target)
    else:
        target.write_text(tests)
    done = promtool.run(["test", "rules", target.name], tmp_path)
    return done.stdout + done.stderr if done.returncode else ""


def test_every_alert_is_there_with_a_severity_and_words() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_rules_use_only_metrics_diskguard_exports() -> None:
    used = set().union(*(metric_names(r["expr"]) for r in _rules()))
    assert used, "no diskguard_* metric found in the rules"
    assert used <= exported_metrics(), sorted(used - exported_metrics())


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool.check_rules(promtool.write_rules(tmp_path / "rules.yaml", promtool.alert_rules()))


def test_each_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert tested == ALERTS  # a new rule needs its cases
    failed = _promtool_test(tmp_path, promtool.alert_rules(), UNIT_TESTS)
    assert not failed, failed


def test_a_looser_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The cases can fail: at a threshold of 40 %, the container at half its limit alerts."""
    rules = promtool.alert_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace(">= 0.95", ">= 0.4")
    failed = _promtool_test(tmp_path, rules, UNIT_TESTS)
    assert "batch-0" in failed, failed or "promtool passed"


def test_the_at_limit_rule_reads_the_agents_bio_level_saturation() -> None:
    """Not a PromQL ratio of the sampler's counters over the limit: with the eBPF sampler
    those count requests, which merged IO makes fewer than the bios the limit counts."""
    [at_limit] = [r for r in _rules() if r["alert"] == "DiskguardContainerAtIOLimit"]
    assert "diskguard_container_io_saturation" in at_limit["expr"]
    assert "diskguard_container_io_ops_total" not in at_limit["expr"]
