"""Event latency: from the decision (`EventSink.emit`) to the POST reaching the API server.

The agent's real Event pipeline (EventSink, post_events, the kubernetes client in worker
threads) against the bundled fake API server over loopback HTTP; the server logs each
request's arrival on the same monotonic clock, so latency = arrival - emit. Scenarios:

1. three Events at once (three pods clamped by ceilings, the case of issue #11);
2. a burst of 100 Events;
3. 30 Events, 20 ms apart, while the API server fails every post of one other Event (500);
4. the same while the API server holds one other Event's post (hung until released);
5. scenario 3 with the pre-#11 poster's shape (one post at a time, 10/s, no burst).

No root needed.  .venv/bin/python bench/event_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from kubernetes import client, config

from diskguard.kube.api import CoreApi
from diskguard.kube.events import EventRequest, EventSink, post_events
from diskguard.testing.fakeapi import FakeAPIServer


def _request(name: str) -> EventRequest:
    return EventRequest("Pod", "default", name, f"uid-{name}", "IOLimitClamped", "bench")


def _arrivals(api: FakeAPIServer) -> dict[str, float]:
    first: dict[str, float] = {}
    for r in api.requests():
        if r.method == "POST" and r.path.endswith("/events") and isinstance(r.body, dict):
            first.setdefault(r.body["involvedObject"]["name"], r.time)
    return first


async def _scenario(
    api: FakeAPIServer,
    v1: CoreApi,
    names: list[str],
    gap: float,
    *,
    victim: str = "",
    fault: dict[str, Any] | None = None,
    poster: dict[str, Any] | None = None,
) -> list[float]:
    api.clear_requests()
    api.clear_faults()
    sink = EventSink()
    emitted: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: post_events(sink, v1, "bench-node", **(poster or {})))
        if victim:
            api.inject_fault("POST", "/events$", body_regex=f'"name": "{victim}"', **(fault or {}))
            sink.emit(_request(victim))
            await _until(lambda: victim in _arrivals(api))
        for name in names:
            emitted[name] = time.monotonic()
            sink.emit(_request(name))
            if gap:
                await trio.sleep(gap)
        await _until(lambda: set(names) <= set(_arrivals(api)), timeout=60)
        arrivals = _arrivals(api)
        api.clear_faults()  # releases a held post
        nursery.cancel_scope.cancel()
    return [arrivals[n] - emitted[n] for n in names]


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


def _summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"n={len(ms):4d}  p50 {statistics.median(ms):7.1f} ms  p99 {p99:7.1f} ms  "
        f"max {ms[-1]:7.1f} ms"
    )


async def run(repeats: int) -> None:
    with FakeAPIServer() as api, tempfile.TemporaryDirectory() as tmp:
        cfg = client.Configuration()
        config.load_kube_config(
            config_file=api.write_kubeconfig(Path(tmp) / "kubeconfig"), client_configuration=cfg
        )
        cfg.retries = False
        v1 = CoreApi(client.ApiClient(cfg))
        serial = {"concurrency": 1, "burst": 1, "rate": 10.0}
        scenarios: list[tuple[str, Callable[[int], Any]]] = [
            ("3 Events at once", lambda i: _scenario(api, v1, [f"c{i}-{k}" for k in range(3)], 0)),
            ("burst of 100", lambda i: _scenario(api, v1, [f"b{i}-{k}" for k in range(100)], 0)),
            (
                "30 Events, one other failing (500)",
                lambda i: _scenario(
                    api,
                    v1,
                    [f"f{i}-{k}" for k in range(30)],
                    0.02,
                    victim=f"victim-f{i}",
                    fault={"status": 500},
                ),
            ),
            (
                "30 Events, one other hung",
                lambda i: _scenario(
                    api,
                    v1,
                    [f"h{i}-{k}" for k in range(30)],
                    0.02,
                    victim=f"victim-h{i}",
                    fault={"status": None, "hang": True},
                ),
            ),
            (
                "30 Events, one failing, pre-#11 serial poster",
                lambda i: _scenario(
                    api,
                    v1,
                    [f"s{i}-{k}" for k in range(30)],
                    0.02,
                    victim=f"victim-s{i}",
                    fault={"status": 500},
                    poster=serial,
                ),
            ),
        ]
        for title, make in scenarios:
            values: list[float] = []
            for i in range(repeats):
                values += await make(i)
            print(f"  {title:<46} {_summary(values)}")
        v1.api_client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"command: .venv/bin/python bench/event_bench.py --repeats {args.repeats}")
    print("== emit -> API server receipt")
    trio.run(run, args.repeats)


if __name__ == "__main__":
    main()
