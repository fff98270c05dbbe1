"""The kubelet as the IO-rate source for smart limit (`SMART_LIMIT_USE_KUBELET_API=true`).

Polls the kubelet's `/metrics/cadvisor`, turns cAdvisor's per-container filesystem
counters into rates, and hands them to the same listeners as the local sampler, so smart
limit does not know which source feeds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from diskguard.agent.measuring import Listener
from diskguard.agent.reconciler import Reconciler
from diskguard.kube.cadvisor import CadvisorParseError, CadvisorRateTracker, parse_cadvisor
from diskguard.kube.kubelet import KubeletClient, KubeletError
from diskguard.logs import get_logger
from diskguard.model import ContainerKey, Device
from diskguard.policy.smart import Sample

log = get_logger(__name__)


class KubeletRateTask:
    def __init__(
        self,
        client: KubeletClient,
        reconciler: Reconciler,
        interval: float,
        devices: Sequence[Device],
        *,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self._client = client
        self._reconciler = reconciler
        self.interval = interval
        # cAdvisor names devices by node (/dev/vdb); a data device without a name cannot be
        # matched, so then every device counts.
        names = [d.name for d in devices]
        self._devices: list[str] | None = names if all(names) else None
        self._tracker = CadvisorRateTracker(clock=trio.current_time)
        self._listeners = tuple(listeners)
        self.failing = ""

    def _keys(self) -> dict[tuple[str, str, str], ContainerKey]:
        return {
            (c.ref.namespace, c.ref.pod, c.ref.container): c.ref.key
            for plan in self._reconciler.plans.values()
            for c in plan.containers
        }

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await trio.sleep(self.interval)

    async def poll_once(self) -> None:
        try:
            text = await self._client.cadvisor_metrics()
            parsed = await trio.to_thread.run_sync(parse_cadvisor, text, self._devices)
        except (KubeletError, CadvisorParseError) as exc:
            if str(exc) != self.failing:
                log.warning("kubelet IO rates unavailable", error=str(exc))
            self.failing = str(exc)
            return
        if self.failing:
            log.info("kubelet IO rates available again")
        self.failing = ""
        rates = self._tracker.update(parsed)
        latest = self._tracker.latest()
        keys = self._keys()
        now = trio.current_time()
        samples: dict[ContainerKey, Sample] = {}
        for pc, r in rates.items():
            key = keys.get((pc.namespace, pc.pod, pc.container))
            if key is not None and pc in latest:
                samples[key] = Sample.of(now, latest[pc].interval, r)
        for listener in self._listeners:
            listener(samples)
