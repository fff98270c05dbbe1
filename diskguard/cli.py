"""Command line: `diskguard run | demo` (and more as features land)."""

from __future__ import annotations

import os
import sys

import click
import trio

from diskguard.config import ConfigError, load_config
from diskguard.logs import configure_logging


@click.group()
def main() -> None:
    """diskguard: per-container disk IO limits for Kubernetes nodes."""


@main.command()
def run() -> None:
    """Run the node agent (configured by environment variables; see README)."""
    from diskguard.agent import run_until_signalled
    from diskguard.kube.client import KubeConfigError
    from diskguard.node.cgroups import CgroupError
    from diskguard.node.devices import DeviceError

    env = dict(os.environ)
    try:
        config = load_config(env)
    except ConfigError as exc:
        click.echo(f"diskguard: configuration error: {exc}", err=True)
        sys.exit(2)
    configure_logging(config.log_level, config.log_format)
    try:
        trio.run(run_until_signalled, config, env)
    except (CgroupError, DeviceError, KubeConfigError) as exc:
        click.echo(f"diskguard: cannot start: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option("--fio-seconds", default=3.0, show_default=True, help="Length of each fio run.")
def demo(fio_seconds: float) -> None:
    """Show the agent limiting a real cgroup on a loop disk, with a bundled fake API server."""
    from diskguard.demo import run_demo

    configure_logging("warning", "text")
    run_demo(fio_seconds, click.echo)


if __name__ == "__main__":
    main()
