"""Command line: `diskguard run | demo` (and more as features land)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import attrs
import click
import trio

from diskguard.config import Config, ConfigError, load_config
from diskguard.logs import configure_logging
from diskguard.model import LimitField

if TYPE_CHECKING:
    from diskguard.node.setup import NodeSetup


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diskguard", prog_name="diskguard")
def main() -> None:
    """diskguard: per-container disk IO limits for Kubernetes nodes."""


@main.command()
def run() -> None:
    """Run the node agent (configured by environment variables; see README)."""
    from diskguard.agent.run import run_until_signalled
    from diskguard.kube.client import KubeConfigError
    from diskguard.kube.kubelet import KubeletError
    from diskguard.node.cgroups import CgroupError
    from diskguard.node.devices import DeviceError
    from diskguard.node.state import StateError
    from diskguard.sampler import SamplerUnavailable

    env = dict(os.environ)
    config = _config_or_exit(env)
    configure_logging(config.log_level, config.log_format)
    startup_errors = (
        CgroupError,
        DeviceError,
        KubeConfigError,
        KubeletError,
        SamplerUnavailable,
        StateError,
    )
    problem = ""
    try:
        trio.run(run_until_signalled, config, env)
    except* startup_errors as group:  # naked, or from inside the agent's nurseries
        problem = "; ".join(str(e) for e in _leaves(group))
    if problem:
        click.echo(f"diskguard: cannot start: {problem}", err=True)
    _leave(1 if problem else 0)


def _leave(code: int) -> NoReturn:
    """Exit without interpreter finalization.

    Shutdown abandons worker threads blocked on a hung API server (an Event post, a PATCH):
    they hold no state worth saving, but when one wakes while the interpreter finalizes,
    CPython ends it with pthread_exit, which aborts the process (exit status -6 seen after
    SIGTERM). Everything the agent owns is closed by now, so flush the output and go.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _config_or_exit(env: dict[str, str]) -> Config:
    try:
        return load_config(env)
    except ConfigError as exc:
        click.echo(f"diskguard: configuration error: {exc}", err=True)
        sys.exit(2)


@main.command("reset-all")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--all-matching",
    is_flag=True,
    help="No record yet (first upgrade from a version without one): clear every limit on "
    "the data devices of every container cgroup under kubepods instead.",
)
def reset_all_command(dry_run: bool, all_matching: bool) -> None:
    """Remove the limits diskguard set on this node (uninstall; stop the agent first).

    Clears exactly the (cgroup, device) rules the agent recorded in STATE_DIR before it
    set them; a rule someone else set is never touched. With --all-matching (for nodes
    whose agent predates the record), clears every limit on the data devices (DATA_MOUNT)
    of every container cgroup under kubepods, for both cgroup drivers.
    """
    from diskguard.node.limits import backend_for
    from diskguard.node.state import NoRecordError, StateDir, StateError, read_record
    from diskguard.tools.reset import reset_all, reset_recorded

    env = dict(os.environ)
    env.setdefault("NODE_NAME", socket.gethostname().lower())
    config = _config_or_exit(env)
    configure_logging(config.log_level, config.log_format)
    node = _node_or_exit(config)
    backend = backend_for(node.hierarchy.version)
    state = StateDir(Path(config.state_dir))
    try:
        if all_matching:
            cleared = reset_all(
                node.hierarchy,
                backend,
                node.devices,
                config.kubelet_cgroup_root,
                dry_run=dry_run,
            )
        else:
            cleared = reset_recorded(
                node.hierarchy, backend, read_record(state), state, dry_run=dry_run
            )
    except NoRecordError as exc:
        click.echo(
            f"diskguard: {exc}: the agent on this node never recorded a limit (it predates "
            "the record, or never ran). Nothing was changed. To clear every limit on the "
            "data devices of every container cgroup instead, run "
            "`diskguard reset-all --all-matching`.",
            err=True,
        )
        sys.exit(3)
    except StateError as exc:
        click.echo(f"diskguard: {exc}", err=True)
        sys.exit(1)
    verb = "would clear" if dry_run else "cleared"
    for item in cleared:
        status = f" FAILED: {item.error}" if item.error else ""
        click.echo(f"{verb} {item.device} {item.before} in {item.cgroup}{status}")
    click.echo(f"{len(cleared)} limit(s) {verb}")
    if any(item.error for item in cleared):
        sys.exit(1)
    if not dry_run:
        click.echo("diskguard reset-all: done")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Check everything the agent depends on on this node, and explain what is wrong."""
    from diskguard.tools.doctor import environ, run_doctor

    configure_logging("error")
    sys.exit(run_doctor(environ(), click.echo, as_json=as_json))


@main.command()
@click.option("--namespace", default=None, help="Only this namespace's containers.")
@click.option("--pod", default=None, help="Only this pod's containers.")
@click.option("--json", "as_json", is_flag=True, help="The whole /status document as JSON.")
def status(namespace: str | None, pod: str | None, as_json: bool) -> None:
    """Show the running agent's /status (run it in the agent's pod: with
    STATUS_LOCALHOST_ONLY, /status answers only on the pod's loopback)."""
    import json

    from diskguard.tools.status import StatusUnavailable, fetch_status, render

    env = dict(os.environ)
    env.setdefault("NODE_NAME", socket.gethostname().lower())
    config = _config_or_exit(env)
    try:
        document = fetch_status(config, namespace, pod)
    except StatusUnavailable as exc:
        click.echo(f"diskguard: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        render(document, click.echo)


@main.command()
@click.argument("interval", required=False, type=click.FloatRange(min=0.05, max=3600))
@click.argument("count_arg", metavar="[COUNT]", required=False, type=click.IntRange(min=0))
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (one object per interval).")
@click.option(
    "--sort",
    type=click.Choice(["total", *(f.value for f in LimitField), "limit", "name"]),
    default="total",
    show_default=True,
    help="Sort key (IOPS read+write, one field, the share of the limit in use, or name).",
)
@click.option("--count", default=0, help="Stop after this many intervals (0 = forever).")
@click.option("--rows", "rows_limit", default=40, show_default=True, help="Rows to show.")
@click.option("-n", "--namespace", default=None, help="Only this namespace's containers.")
@click.option(
    "-l", "--selector", default=None, help="Only pods matching this label selector (app=web)."
)
def top(
    interval: float | None,
    count_arg: int | None,
    once: bool,
    as_json: bool,
    sort: str,
    count: int,
    rows_limit: int,
    namespace: str | None,
    selector: str | None,
) -> None:
    """Live per-container IO on the data disks, with the limits in force (like biotop):
    every INTERVAL seconds (default SAMPLE_INTERVAL), COUNT times (default: until Ctrl-C).

    Uses SAMPLER, DATA_MOUNT, CGROUP_* and KUBELET_CGROUP_ROOT like the agent; names
    containers (and matches -n/-l) from the API server when it is reachable.
    """
    from diskguard.policy.labels import SelectorError, parse_selector
    from diskguard.sampler import SamplerUnavailable
    from diskguard.tools.top import run_top

    env = dict(os.environ)
    env.setdefault("NODE_NAME", socket.gethostname().lower())
    config = _config_or_exit(env)
    configure_logging("warning")
    if selector is not None and len(selector) > 4096:
        raise click.BadParameter("longer than 4096 characters", param_hint="-l/--selector")
    try:
        parsed = None if selector is None else parse_selector(selector)
    except SelectorError as exc:
        raise click.BadParameter(str(exc), param_hint="-l/--selector") from None
    _node_or_exit(config)  # clear start-up errors before opening the sampler
    try:
        run_top(
            config,
            env,
            once=once,
            as_json=as_json,
            sort=sort,
            count=count_arg if count_arg is not None else count,
            rows_limit=rows_limit,
            echo=click.echo,
            interval=interval,
            namespace=namespace,
            selector=parsed,
            clear=sys.stdout.isatty(),
        )
    except SamplerUnavailable as exc:
        click.echo(f"diskguard: no IO sampler: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("paths", nargs=-1)
@click.option(
    "--seconds",
    default=5.0,
    show_default=True,
    help="Length of each of the four fio runs (after a 1 s ramp).",
)
@click.option(
    "--size",
    default="1Gi",
    show_default=True,
    help="Size of the temporary test file (a Kubernetes quantity: 1Gi, 512Mi).",
)
@click.option(
    "--jobs", "numjobs", type=int, default=None, help="fio jobs per run (default: CPUs, at most 4)."
)
@click.option("--force", is_flag=True, help="Measure even while other IO runs on the disk.")
@click.option("--no-record", is_flag=True, help="Measure and print only; record nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profile(
    paths: tuple[str, ...],
    seconds: float,
    size: str,
    numjobs: int | None,
    force: bool,
    no_record: bool,
    as_json: bool,
) -> None:
    """Measure what each data disk can do and record it in STATE_DIR (capacity.json).

    PATHS are data mounts (default: DATA_MOUNT). On each disk, four short fio runs on a
    temporary file inside the mount, with O_DIRECT: 4k random read and write IOPS, 1M
    sequential read and write bytes/s. Needs fio. Refuses a disk busy with other IO
    (--force measures anyway) or without room for the test file. Run it on a quiet node,
    e.g. before the node takes workloads.
    """
    import json

    from kubernetes.utils import parse_quantity

    from diskguard.node.profiling import ProfileError
    from diskguard.node.state import StateDir, StateError
    from diskguard.tools.profile import ProfileOptions, profile_paths

    env = dict(os.environ)
    env.setdefault("NODE_NAME", socket.gethostname().lower())
    config = _config_or_exit(env)
    configure_logging("warning")
    try:
        size_bytes = int(parse_quantity(size))
    except (ValueError, TypeError, ArithmeticError):
        raise click.BadParameter(
            f"{size!r} is not a quantity such as 1Gi", param_hint="--size"
        ) from None
    if size_bytes < 2**20 or not 1 <= seconds <= 600 or (numjobs is not None and numjobs < 1):
        raise click.UsageError("--size at least 1Mi, --seconds in 1..600, --jobs at least 1")
    options = ProfileOptions(size=size_bytes, seconds=seconds, force=force)
    if numjobs is not None:
        options = attrs.evolve(options, numjobs=numjobs)
    state = None if no_record else StateDir(Path(config.state_dir))

    def say(line: str) -> None:
        click.echo(line, err=True)  # progress on stderr: stdout stays the result

    # SIGTERM (a one-off pod deleted) unwinds like Ctrl-C: fio is killed, the file removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = profile_paths(paths or config.data_mounts, options, state, say)
    except (ProfileError, StateError) as exc:
        click.echo(f"diskguard: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("diskguard: interrupted; the test file was removed", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in results], indent=2))
    else:
        for r in results:
            name = r.device.name if r.device else r.path
            if r.capacity is not None:
                c = r.capacity
                click.echo(
                    f"{name} ({r.identity or 'no stable identity'}): read {c.read_iops:,} IOPS "
                    f"{c.read_bps / 2**20:,.0f} MiB/s, write {c.write_iops:,} IOPS "
                    f"{c.write_bps / 2**20:,.0f} MiB/s"
                )
            if r.error:
                click.echo(f"{name}: {r.error}", err=True)
        if state is not None and any(r.capacity and r.identity for r in results):
            click.echo(f"recorded in {state.path / 'capacity.json'}")
    sys.exit(1 if any(r.error for r in results) else 0)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _node_or_exit(config: Config) -> NodeSetup:
    from diskguard.node.cgroups import CgroupError
    from diskguard.node.devices import DeviceError
    from diskguard.node.setup import inspect_node

    try:
        return inspect_node(config)
    except (CgroupError, DeviceError) as exc:
        click.echo(f"diskguard: cannot start: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option("--fio-seconds", default=3.0, show_default=True, help="Length of each fio run.")
def demo(fio_seconds: float) -> None:
    """Show the agent limiting a real cgroup on a loop disk, with a bundled fake API server."""
    try:
        from diskguard.tools.demo import run_demo
    except ImportError as exc:  # a runtime-only install (the image) lacks the demo extra
        raise click.ClickException(
            f"the demo needs the `demo` extra ({exc.name} is missing): "
            "scripts/setup-venv.sh demo, or pip install 'diskguard[demo]'"
        ) from exc

    configure_logging("warning")
    run_demo(fio_seconds, click.echo)


if __name__ == "__main__":
    main()
