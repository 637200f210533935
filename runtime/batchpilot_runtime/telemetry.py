"""Prometheus metrics of the runtime: the metrics contract between the runtime and the operator.

This module is torch-free: the operator imports the metric names and the bucket boundaries
from here to parse what every pod serves on ``GET /metrics``. Buckets are fixed and identical
on every pod, so histograms from several pods can be added bucket by bucket and quantiles
interpolated from the sum (as PromQL's ``histogram_quantile`` does).

What each metric means:

- ``batchpilot_queue_depth`` (gauge): items waiting for a batch, all workers together.
- ``batchpilot_requests_total{outcome}`` (counter): inference requests by outcome, one of
  :data:`OUTCOMES`. ``ok`` 200, ``rejected`` 429 (queue full) or 503 (not ready, shutting
  down), ``timeout`` 504, ``invalid`` 413 or 422, ``error`` 500, ``cancelled`` client gone
  first or its body not sent within the body timeout (408).
- ``batchpilot_request_duration_seconds`` (histogram): arrival to response, for requests that
  were answered ``ok`` or ``timeout`` (the latency the SLO is about; refusals are instant and
  only counted).
- ``batchpilot_queue_wait_seconds`` (histogram): per item, arrival to the start of its batch.
- ``batchpilot_batch_size`` (histogram): items per executed batch. ``_sum / _count`` over a
  window is the mean batch size.
- ``batchpilot_batch_duration_seconds`` (histogram): model execution per batch. ``_sum /
  _count`` over a window is the mean service time of a batch of the mean size.
- ``batchpilot_config_max_batch_size``, ``batchpilot_config_max_wait_seconds``,
  ``batchpilot_config_generation`` (gauges): the batching config in force.
- ``batchpilot_device_info{device, emulated}`` (gauge, always 1): one series per model worker
  once loaded; ``emulated="true"`` where batches are timed waits from a service-time profile
  (``device="emulated:PROFILE"``), not a model on a real device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from batchpilot_runtime.config import BatchingConfig

PREFIX: Final = "batchpilot_"

QUEUE_DEPTH: Final = "batchpilot_queue_depth"
REQUESTS_TOTAL: Final = "batchpilot_requests_total"
REQUEST_DURATION_SECONDS: Final = "batchpilot_request_duration_seconds"
QUEUE_WAIT_SECONDS: Final = "batchpilot_queue_wait_seconds"
BATCH_SIZE: Final = "batchpilot_batch_size"
BATCH_DURATION_SECONDS: Final = "batchpilot_batch_duration_seconds"
CONFIG_MAX_BATCH_SIZE: Final = "batchpilot_config_max_batch_size"
CONFIG_MAX_WAIT_SECONDS: Final = "batchpilot_config_max_wait_seconds"
CONFIG_GENERATION: Final = "batchpilot_config_generation"
DEVICE_INFO: Final = "batchpilot_device_info"

DEVICE_LABEL: Final = "device"
EMULATED_LABEL: Final = "emulated"

OUTCOME_LABEL: Final = "outcome"
OUTCOMES: Final = ("ok", "rejected", "timeout", "invalid", "error", "cancelled")
"""Every value of ``batchpilot_requests_total{outcome}``; each is exported from the start."""

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of request duration, queue wait and batch duration buckets."""

BATCH_SIZE_BUCKETS: Final[tuple[float, ...]] = (
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    1024,
    2048,
    4096,
)
"""Upper bounds (items) of the batch size buckets."""


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
        reg = self.registry
        depth = Gauge(QUEUE_DEPTH, "Items waiting for a batch.", registry=reg)
        depth.set_function(queue_depth)
        self.requests = Counter(
            REQUESTS_TOTAL, "Inference requests by outcome.", [OUTCOME_LABEL], registry=reg
        )
        self._by_outcome = {outcome: self.requests.labels(outcome) for outcome in OUTCOMES}
        self.request_duration = Histogram(
            REQUEST_DURATION_SECONDS,
            "Arrival to response of requests answered ok or timeout.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_wait = Histogram(
            QUEUE_WAIT_SECONDS,
            "Per item: arrival to the start of its batch.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            BATCH_SIZE, "Items per executed batch.", buckets=BATCH_SIZE_BUCKETS, registry=reg
        )
        self.batch_duration = Histogram(
            BATCH_DURATION_SECONDS,
            "Model execution time per batch.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        Gauge(
            CONFIG_MAX_BATCH_SIZE, "maxBatchSize of the config in force.", registry=reg
        ).set_function(lambda: config().max_batch_size)
        Gauge(
            CONFIG_MAX_WAIT_SECONDS, "maxWaitMs of the config in force, in seconds.", registry=reg
        ).set_function(lambda: config().max_wait_s)
        Gauge(CONFIG_GENERATION, "generation of the config in force.", registry=reg).set_function(
            lambda: config().generation
        )
        self.devices = Gauge(
            DEVICE_INFO,
            "One series per model worker; emulated=true: batches are timed waits, no model runs.",
            [DEVICE_LABEL, EMULATED_LABEL],
            registry=reg,
        )

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
