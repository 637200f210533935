"""The runtime's Prometheus registry, built from the metrics contract.

Names, label names, outcomes and buckets are :mod:`batchpilot_contract.metrics`' (where each
metric's meaning is written); this module registers them and feeds them from the batcher,
the app and the config in force.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from batchpilot_contract import metrics as m
from batchpilot_contract.batching import BatchingConfig

_Collector = Counter | Gauge | Histogram


def _register(spec: m.Metric, registry: CollectorRegistry) -> _Collector:
    """One collector for ``spec``: its type, help, label names and buckets."""
    if spec.kind is m.Kind.COUNTER:
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind is m.Kind.HISTOGRAM:
        return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
    return Gauge(spec.name, spec.help, spec.labels, registry=registry)


class Telemetry:
    """The metrics of one runtime app, in a registry of its own (several apps can coexist)."""

    def __init__(
        self,
        *,
        queue_depth: Callable[[], float],
        config: Callable[[], BatchingConfig],
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape noise
        self.registry = CollectorRegistry(auto_describe=True)
        made = {spec.name: _register(spec, self.registry) for spec in m.METRICS}

        def gauge(name: str) -> Gauge:
            collector = made[name]
            assert isinstance(collector, Gauge)
            return collector

        def histogram(name: str) -> Histogram:
            collector = made[name]
            assert isinstance(collector, Histogram)
            return collector

        gauge(m.QUEUE_DEPTH).set_function(queue_depth)
        gauge(m.CONFIG_MAX_BATCH_SIZE).set_function(lambda: config().max_batch_size)
        gauge(m.CONFIG_MAX_WAIT_SECONDS).set_function(lambda: config().max_wait_s)
        gauge(m.CONFIG_GENERATION).set_function(lambda: config().generation)
        requests = made[m.REQUESTS_TOTAL]
        assert isinstance(requests, Counter)
        self._by_outcome = {outcome: requests.labels(outcome) for outcome in m.OUTCOMES}
        self.request_duration = histogram(m.REQUEST_DURATION_SECONDS)
        self.queue_wait = histogram(m.QUEUE_WAIT_SECONDS)
        self.batch_size = histogram(m.BATCH_SIZE)
        self.batch_duration = histogram(m.BATCH_DURATION_SECONDS)
        self.devices = gauge(m.DEVICE_INFO)

    def device_loaded(self, device: str, *, emulated: bool) -> None:
        """Export a loaded model worker's device (and whether it is emulated)."""
        self.devices.labels(device, "true" if emulated else "false").set(1)

    # The batcher's observer interface (see batcher.BatchObserver).
    def batch_started(self, queue_waits: Sequence[float]) -> None:
        for wait in queue_waits:
            self.queue_wait.observe(wait)

    def batch_finished(self, size: int, duration: float) -> None:
        self.batch_size.observe(size)
        self.batch_duration.observe(duration)

    def request_done(self, outcome: str, duration: float | None = None) -> None:
        """Count one inference request; ``duration`` is observed when given."""
        self._by_outcome[outcome].inc()
        if duration is not None:
            self.request_duration.observe(duration)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
