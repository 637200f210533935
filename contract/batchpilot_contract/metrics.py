"""The metrics every runtime pod exports on ``GET /metrics``, and the operator scrapes.

The runtime builds its registry from :data:`METRICS`; the operator parses with the same
names. Buckets are fixed and identical on every pod, so histograms from several pods can be
added bucket by bucket and quantiles interpolated from the sum (as PromQL's
``histogram_quantile`` does).

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

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

PREFIX: Final = "batchpilot_"
"""Every metric name starts with it."""

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

OUTCOME_LABEL: Final = "outcome"
DEVICE_LABEL: Final = "device"
EMULATED_LABEL: Final = "emulated"


class Outcome(StrEnum):
    """Every value of ``batchpilot_requests_total{outcome}``; each is exported from the start."""

    OK = "ok"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    ERROR = "error"
    CANCELLED = "cancelled"


OUTCOMES: Final = tuple(o.value for o in Outcome)
"""The outcome values in export order."""

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of request duration, queue wait and batch duration buckets."""

BATCH_SIZE_BUCKETS: Final[tuple[float, ...]] = (
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096,
)  # fmt: skip
"""Upper bounds (items) of the batch size buckets."""


class Kind(StrEnum):
    """A Prometheus metric type."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Metric:
    """One exported metric: what the runtime registers and the docs list.

    ``name`` is the exposed name (a counter's ends in ``_total``); ``labels`` are the label
    names; ``buckets`` the finite upper bounds of a histogram (``+Inf`` is implied).
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"{self.name}: a metric name starts with {PREFIX}")
        if (self.kind is Kind.COUNTER) != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")
        if (self.kind is Kind.HISTOGRAM) != bool(self.buckets):
            raise ValueError(f"{self.name}: histograms, and only histograms, have buckets")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{self.name}: buckets must be strictly increasing")


METRICS: Final = (
    Metric(QUEUE_DEPTH, Kind.GAUGE, "Items waiting for a batch."),
    Metric(REQUESTS_TOTAL, Kind.COUNTER, "Inference requests by outcome.", (OUTCOME_LABEL,)),
    Metric(
        REQUEST_DURATION_SECONDS,
        Kind.HISTOGRAM,
        "Arrival to response of requests answered ok or timeout.",
        buckets=LATENCY_BUCKETS,
    ),
    Metric(
        QUEUE_WAIT_SECONDS,
        Kind.HISTOGRAM,
        "Per item: arrival to the start of its batch.",
        buckets=LATENCY_BUCKETS,
    ),
    Metric(BATCH_SIZE, Kind.HISTOGRAM, "Items per executed batch.", buckets=BATCH_SIZE_BUCKETS),
    Metric(
        BATCH_DURATION_SECONDS,
        Kind.HISTOGRAM,
        "Model execution time per batch.",
        buckets=LATENCY_BUCKETS,
    ),
    Metric(CONFIG_MAX_BATCH_SIZE, Kind.GAUGE, "maxBatchSize of the config in force."),
    Metric(CONFIG_MAX_WAIT_SECONDS, Kind.GAUGE, "maxWaitMs of the config in force, in seconds."),
    Metric(CONFIG_GENERATION, Kind.GAUGE, "generation of the config in force."),
    Metric(
        DEVICE_INFO,
        Kind.GAUGE,
        "One series per model worker; emulated=true: batches are timed waits, no model runs.",
        (DEVICE_LABEL, EMULATED_LABEL),
    ),
)
"""Every metric a runtime pod exports, in export order."""

LABEL_VALUES: Final[dict[str, tuple[str, ...]]] = {OUTCOME_LABEL: OUTCOMES}
"""The labels whose values are fixed by the contract (the others name what the pod has)."""

BY_NAME: Final = {m.name: m for m in METRICS}
""":data:`METRICS` by name."""
