"""The agent: one trio nursery running the pod watch, the cgroup apply and Event posting.

Shutdown (SIGTERM/SIGINT or cancellation) stops every task and leaves the kernel limits in
place: an agent upgrade must not unthrottle the node.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Mapping

import attrs
import trio
from kubernetes import client as k8s

from diskguard.applier import Applier
from diskguard.config import Config
from diskguard.kube.client import make_api_client
from diskguard.kube.events import QUEUE_SIZE, EventRequest, EventSink, post_events
from diskguard.kube.watch import ListWatcher, WatchEvent
from diskguard.model import CgroupDriver, Device
from diskguard.node.cgroups import CgroupHierarchy, detect_cgroup
from diskguard.node.devices import resolve_data_devices
from diskguard.node.limits import backend_for
from diskguard.plan import runtime_override
from diskguard.reconciler import Reconciler, ReconcileSettings

log = logging.getLogger(__name__)

# How long pods wait for the first namespace list (namespace policy) before limits are
# applied without it; bounded so a missing RBAC rule cannot stall enforcement.
NAMESPACE_WAIT = 10.0


@attrs.frozen
class NodeSetup:
    """What start-up found on the node; a failure here stops start-up with a clear message."""

    hierarchy: CgroupHierarchy
    devices: tuple[Device, ...]


def inspect_node(config: Config) -> NodeSetup:
    hierarchy = detect_cgroup(config.cgroup_root, config.cgroup_version)
    devices = resolve_data_devices(config.data_mounts)
    return NodeSetup(hierarchy, devices)


class Agent:
    """The running agent's parts, reachable for the HTTP/status side and for tests."""

    def __init__(self, config: Config, node: NodeSetup, api_client: k8s.ApiClient) -> None:
        self.config = config
        self.node = node
        self.api = k8s.CoreV1Api(api_client)
        driver = None if config.cgroup_driver == "auto" else CgroupDriver(config.cgroup_driver)
        self.applier = Applier(
            node.hierarchy,
            backend_for(node.hierarchy.version),
            node.devices,
            driver,
            config.kubelet_cgroup_root,
        )
        self._event_send, self._event_receive = trio.open_memory_channel[EventRequest](
            QUEUE_SIZE
        )
        self.events = EventSink(self._event_send)
        self.reconciler = Reconciler(
            ReconcileSettings(
                node_name=config.node_name,
                prefix=config.annotation_prefix,
                defaults=config.defaults,
                exclusion=config.exclusion,
                resync_interval=config.resync_interval,
                forced_runtime=runtime_override(config.container_runtime),
                guardrails=config.guardrails,
                namespace_wait=NAMESPACE_WAIT,
            ),
            self.applier,
            self.events.emit,
        )
        self._watch_send, self._watch_receive = trio.open_memory_channel[WatchEvent](100)
        self.pod_watcher = ListWatcher(
            "pods",
            functools.partial(
                self.api.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={config.node_name}",
            ),
            self._watch_send,
        )
        self.namespace_watcher = ListWatcher(
            "namespaces", self.api.list_namespace, self._watch_send.clone()
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.info(
            "diskguard starting on node %s: cgroup %s at %s, data devices %s, defaults %s",
            self.config.node_name,
            self.node.hierarchy.version.value,
            self.node.hierarchy.path,
            ", ".join(f"{d.name or '?'}={d}" for d in self.node.devices),
            self.config.defaults,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.pod_watcher.run, name="pod-watch")
            nursery.start_soon(self.namespace_watcher.run, name="namespace-watch")
            nursery.start_soon(self.reconciler.run, self._watch_receive, name="cgroup-apply")
            nursery.start_soon(
                functools.partial(post_events, self._event_receive, self.api,
                                  self.config.node_name),
                name="events",
            )
            task_status.started()


async def run_until_signalled(config: Config, env: Mapping[str, str]) -> None:
    node = await trio.to_thread.run_sync(inspect_node, config)
    api_client = make_api_client(env)
    agent = Agent(config, node, api_client)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("received %s: stopping, kernel limits stay in place",
                             signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
    api_client.close()
