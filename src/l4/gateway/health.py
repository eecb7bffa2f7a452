"""Which engines are in service: consecutive failures per backend (a circuit breaker).

Guarantees: an engine is taken out of service by a refused connection or a cut stream at once, by
errors after ``failures_to_trip`` in a row, never by a timeout alone (under a burst the gateway
itself may be the slow one; a hung engine fails its health checks anyway); taking out calls
``on_out`` once, and bringing back resets the count. State changes show in the metrics and the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from l4.errors import BackendError
from l4.gateway.book import LiveCluster
from l4.gateway.metrics import GatewayMetrics

log = logging.getLogger("l4.gateway")


class HealthBook:
    """Consecutive failures per backend; takes a backend out of service (circuit breaker).

    A refused connection or a cut stream takes it out at once (the engine is gone); 5xx answers
    after `failures_to_trip` in a row. A timeout only moves its request: under a burst the
    gateway itself may be the slow one, and a hung engine fails its health checks anyway. The
    health checker brings a backend back.
    """

    def __init__(
        self,
        cluster: LiveCluster,
        metrics: GatewayMetrics,
        names: list[str],
        *,
        failures_to_trip: int,
        on_out: Callable[[int], None],
    ) -> None:
        self._cluster = cluster
        self._metrics = metrics
        self._names = names
        self._trip = failures_to_trip
        self._in_a_row = [0] * len(names)
        self._on_out = on_out

    def failed(self, instance_id: int, exc: BackendError) -> None:
        self._metrics.backend_failures.labels(self._names[instance_id]).inc()
        if exc.kind == "timeout":
            return
        self._in_a_row[instance_id] += 1
        if exc.kind == "gone" or self._in_a_row[instance_id] >= self._trip:
            self.take_out(instance_id, str(exc))

    def succeeded(self, instance_id: int) -> None:
        self._in_a_row[instance_id] = 0

    def take_out(self, instance_id: int, why: str) -> None:
        inst = self._cluster.instances[instance_id]
        if not inst.healthy:
            return
        inst.healthy = False
        self._metrics.healthy.labels(self._names[instance_id]).set(0)
        log.warning("backend %s taken out of service: %s", self._names[instance_id], why)
        self._on_out(instance_id)

    def bring_back(self, instance_id: int) -> None:
        inst = self._cluster.instances[instance_id]
        if inst.healthy:
            return
        inst.healthy = True
        self._in_a_row[instance_id] = 0
        self._metrics.healthy.labels(self._names[instance_id]).set(1)
        log.info("backend %s back in service", self._names[instance_id])
