"""deploy/grafana/diskguard-dashboard.json read as data: its panels, its PromQL with the
template variables filled in, so tests can check the queries offline (promtool) and a live
test can run them against a Prometheus that scrapes agents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from .manifests import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "diskguard-dashboard.json"
# Values that make every query a plain PromQL query matching everything: what Grafana
# would send with "All" selected and a 1m rate interval.
MATCH_ALL = {"__rate_interval": "1m", "node": ".*", "namespace": ".*", "pod": ".*"}
# `$name` or `${name}`, Grafana's two ways to use a variable in a query.
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# A query variable's `label_values(selector, label)`: the selector is PromQL.
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@cache
def _load() -> str:
    return DASHBOARD.read_text()


def load_dashboard() -> dict[str, Any]:
    """The dashboard, a fresh copy each call."""
    return dict(json.loads(_load()))


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels a collapsed row holds."""
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def substitute(query: str, values: Mapping[str, str]) -> str:
    """`query` with each template variable replaced by its value in `values` (names
    without the `$`); a variable missing from `values` is a KeyError naming it."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"{query!r} uses ${name}, which has no value to substitute")
        return values[name]

    return _VARIABLE.sub(value, query)


def target_exprs(dashboard: Mapping[str, Any]) -> list[str]:
    """Every panel query as written in the dashboard, in panel order."""
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets") or []]


def dashboard_queries(values: Mapping[str, str] = MATCH_ALL) -> list[str]:
    """Every panel's PromQL, ready to run: template variables replaced by `values`
    (default: match everything, `$__rate_interval` 1m)."""
    return [substitute(expr, values) for expr in target_exprs(load_dashboard())]


def variable_selectors(values: Mapping[str, str] = MATCH_ALL) -> dict[str, str]:
    """The series selector of each `label_values(...)` query variable, by variable name."""
    found = {}
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        if match is None:
            raise ValueError(f"${variable['name']}: not a label_values(...) query: {text!r}")
        found[variable["name"]] = substitute(match["selector"], values)
    return found
