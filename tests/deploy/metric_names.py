"""Which series names diskguard exports, read from diskguard/web/metrics.py's source, so the
alert rules and the dashboard can be checked against them without running an agent.

Every family there is built as `CounterMetricFamily("name", ...)` (and Gauge..., Histogram...)
with the name as a literal (or a choice between literals); the Prometheus client adds the
suffixes: `_total` to a counter, `_bucket`, `_sum` and `_count` to a histogram.
"""

from __future__ import annotations

import ast
import re
from functools import cache

from .manifests import REPO

METRICS_SOURCE = REPO / "diskguard" / "web" / "metrics.py"
SUFFIXES = {
    "CounterMetricFamily": ("_total",),
    "GaugeMetricFamily": ("",),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
}
# A diskguard series name in a PromQL expression (label values never start like this).
SERIES = re.compile(r"\bdiskguard_[a-z_]+\b")


@cache
def exported_metrics() -> frozenset[str]:
    """Every diskguard_* series name /metrics can hold (suffixes included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(METRICS_SOURCE.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        suffixes = SUFFIXES.get(node.func.id)
        if suffixes is None:
            continue
        for name in ast.walk(node.args[0]):
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.update(name.value + suffix for suffix in suffixes)
    # Fewer than this means the source is no longer written the way this reader expects.
    assert len(found) > 20 and "diskguard_ready" in found, sorted(found)
    return frozenset(found)


def metric_names(expr: str) -> set[str]:
    """The diskguard_* series names a PromQL expression uses."""
    return set(SERIES.findall(expr))
