"""Test-suite wide configuration: lanes, time budgets, hypothesis, kernel fixtures.

Every test belongs to exactly one lane, chosen by markers (scripts/test.sh selects with -m):
  pure    no kernel, no root: parsing, policy, fakes (added here to every test that has none
          of the markers below); runs in the host lane only.
  kernel  real cgroups and block devices (root): the host lane and the v2 qemu lane, unless
          also `host_only` (fault tests whose timing means nothing under emulation).
  install a fresh clone, a wheel install, the README's first command (the install lane).
  image   the container image built from the Dockerfile and run like the DaemonSet.
Every test also gets a time budget (pytest-timeout) unless it sets its own: a hang fails
that test with a stack dump instead of stalling CI. Budgets stretch by the lane's SLOW factor.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# By their one import path: tests/ is a package (tests/__init__.py), like every folder in it.
pytest_plugins = ["tests.kernel_fixtures", "tests.install_fixtures"]

# In priority order: an image or install test may need the kernel too, but is in its lane.
LANE_MARKERS = ("image", "install", "kernel")
# Seconds per test, by lane marker; `slow` tests get the larger figure.
BUDGETS = {"pure": (60, 300), "kernel": (120, 420), "install": (900, 900), "image": (1800, 1800)}
# The v2 lane runs under software emulation: budgets stretch eightfold there.
SLOW = 8.0 if os.environ.get("DISKGUARD_LANE") == "v2" else 1.0

# A busy 2-core CI machine makes per-example deadlines and "too slow" health checks fail
# tests that are correct; the property tests bound their work by max_examples instead.
settings.register_profile("diskguard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "diskguard"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        lanes = [m for m in LANE_MARKERS if item.get_closest_marker(m)]
        if not lanes:
            item.add_marker(pytest.mark.pure)
        lane = lanes[0] if lanes else "pure"
        if item.get_closest_marker("timeout") is None:
            normal, slow = BUDGETS[lane]
            budget = slow if item.get_closest_marker("slow") else normal
            item.add_marker(pytest.mark.timeout(budget * SLOW))
