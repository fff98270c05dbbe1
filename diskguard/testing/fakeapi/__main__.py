"""`python -m diskguard.testing.fakeapi`: run the fake API server standalone until interrupted."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import trio
import yaml

from .errors import ApiError
from .server import FakeAPIServer


def _load_seed(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    # Either one YAML list of objects or a multi-document stream of objects.
    objects = docs[0] if len(docs) == 1 and isinstance(docs[0], list) else docs
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise ValueError(f"seed object #{i} is not a mapping with a kind")
    return objects


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diskguard.testing.fakeapi", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", help="YAML list of objects to create at start")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for this server here")
    parser.add_argument("--bookmark-interval", type=float, default=1.0)
    parser.add_argument("--history-limit", type=int, default=10000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        server = FakeAPIServer(
            args.host,
            args.port,
            bookmark_interval=args.bookmark_interval,
            history_limit=args.history_limit,
        )
        for obj in _load_seed(args.seed) if args.seed else []:
            server.create(obj["kind"], obj)
    except (OSError, ValueError, KeyError, yaml.YAMLError, ApiError) as exc:
        print(f"fakeapi: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(_serve, server)
            if args.kubeconfig:
                server.write_kubeconfig(args.kubeconfig)
            # The line a parent process waits for before it starts talking to us.
            print(f"fakeapi listening on {server.url}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        os_error = _find_os_error(exc)
        if os_error is None:
            raise
        print(f"fakeapi: cannot serve: {os_error}", file=sys.stderr)
        return 2
    return 0


def _find_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_os_error(inner)
            if found is not None:
                return found
    return None


async def _serve(server: FakeAPIServer, *, task_status: trio.TaskStatus[None]) -> None:
    await server.serve_forever(task_status=task_status)


if __name__ == "__main__":
    sys.exit(main())
