"""Where the agent's baseline memory goes: RSS of a fresh interpreter after each import.

Each row is a new `python -c` that imports the modules of every row above it plus its own,
then reports VmRSS and the anonymous part (RssAnon) from /proc/self/status, so a row's
increase is what its import adds on top of the ones above. The last row is the agent's
whole import graph (`diskguard.agent.run`), i.e. the floor under any agent's RSS before it
holds a single pod.

    .venv/bin/python bench/import_memory.py
"""

from __future__ import annotations

import subprocess
import sys

# In the order the agent pulls them in; later rows include earlier ones.
STEPS: tuple[tuple[str, str], ...] = (
    ("python (site, stdlib basics)", ""),
    ("trio", "trio"),
    ("attrs", "attrs"),
    ("structlog", "structlog"),
    ("httpx (kubelet client)", "httpx"),
    ("prometheus_client", "prometheus_client"),
    ("hypercorn + starlette (HTTP)", "hypercorn.trio, starlette.applications"),
    ("kubernetes client", "kubernetes.client, kubernetes.watch, kubernetes.config"),
    ("diskguard.agent.run (the whole agent)", "diskguard.agent.run"),
)

PROBE = """
import {imports}
fields = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
kib = lambda k: int(fields[k].split()[0])
print(kib("VmRSS"), kib("RssAnon"))
"""


def measure(modules: list[str]) -> tuple[int, int]:
    imports = ", ".join(modules) if modules else "sys"
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def main() -> int:
    modules: list[str] = []
    previous = 0
    print(f"{'after importing':<42}{'RSS MiB':>9}{'anon MiB':>10}{'+ MiB':>8}")
    for label, names in STEPS:
        modules += [n.strip() for n in names.split(",") if n.strip()]
        # Three fresh interpreters each; the smallest is the least disturbed by the machine.
        rss, anon = min(measure(modules) for _ in range(3))
        print(f"{label:<42}{rss / 1024:>9.1f}{anon / 1024:>10.1f}{(rss - previous) / 1024:>+8.1f}")
        previous = rss
    return 0


if __name__ == "__main__":
    sys.exit(main())
