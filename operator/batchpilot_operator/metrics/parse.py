"""One pod's ``/metrics`` text, parsed with prometheus_client's parser into a
:class:`PodSample`: request counts by outcome, the histograms, the queue depth and the
batching config the pod reports in force."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from batchpilot_contract.metrics import BATCH_DURATION_SECONDS as BATCH_DURATION
from batchpilot_contract.metrics import (
    BATCH_SIZE,
    CONFIG_GENERATION,
    CONFIG_MAX_BATCH_SIZE,
    QUEUE_DEPTH,
    REQUESTS_TOTAL,
)
from batchpilot_contract.metrics import CONFIG_MAX_WAIT_SECONDS as CONFIG_MAX_WAIT
from batchpilot_contract.metrics import OUTCOME_LABEL as OUTCOME
from batchpilot_contract.metrics import QUEUE_WAIT_SECONDS as QUEUE_WAIT
from batchpilot_contract.metrics import REQUEST_DURATION_SECONDS as REQUEST_DURATION
from batchpilot_operator.metrics.histogram import INF, Histogram

HISTOGRAMS = (REQUEST_DURATION, QUEUE_WAIT, BATCH_SIZE, BATCH_DURATION)
GAUGES = (QUEUE_DEPTH, CONFIG_MAX_BATCH_SIZE, CONFIG_MAX_WAIT, CONFIG_GENERATION)


@dataclass(frozen=True)
class PodConfig:
    """The batching config a pod reports in force."""

    max_batch_size: int | None
    max_wait_s: float | None
    generation: int | None


@dataclass(frozen=True)
class PodSample:
    """One pod's metrics at one instant."""

    pod: str
    time: float
    queue_depth: float
    requests: Mapping[str, float]
    """``batchpilot_requests_total`` by outcome."""
    histograms: Mapping[str, Histogram]
    """By metric name (``REQUEST_DURATION``, ``QUEUE_WAIT``, ``BATCH_SIZE``, ...)."""
    config: PodConfig

    def went_backwards(self, earlier: PodSample) -> bool:
        """True when any counter or histogram decreased since ``earlier`` (a restart)."""
        if any(v < earlier.requests.get(k, 0.0) for k, v in self.requests.items()):
            return True
        if sum(self.requests.values()) < sum(earlier.requests.values()):
            return True
        return any(
            name in earlier.histograms and h.went_backwards(earlier.histograms[name])
            for name, h in self.histograms.items()
        )


class MetricsParseError(ValueError):
    """A ``/metrics`` body that is not Prometheus text or lacks the batchpilot metrics."""


def parse_metrics(text: str, *, pod: str, at: float) -> PodSample:
    """Parse one pod's ``/metrics`` text. Series of the same name with other labels are
    summed (histograms bucket by bucket). Raise :class:`MetricsParseError` when the text
    does not parse or carries no ``batchpilot_queue_depth``."""
    gauges: dict[str, float] = {}
    requests: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise MetricsParseError(f"{pod}: not Prometheus text: {exc}") from None
    for family in families:
        for sample in family.samples:
            name = sample.name
            if name == REQUESTS_TOTAL:
                outcome = sample.labels.get(OUTCOME, "")
                requests[outcome] = requests.get(outcome, 0.0) + sample.value
            elif name in GAUGES:
                gauges[name] = gauges.get(name, 0.0) + sample.value
            elif name.endswith("_bucket") and name[: -len("_bucket")] in buckets:
                le = float(sample.labels["le"])
                bucket_counts = buckets[name[: -len("_bucket")]]
                bucket_counts[le] = bucket_counts.get(le, 0.0) + sample.value
            elif name.endswith("_count") and name[: -len("_count")] in buckets:
                base = name[: -len("_count")]
                counts[base] = counts.get(base, 0.0) + sample.value
            elif name.endswith("_sum") and name[: -len("_sum")] in buckets:
                base = name[: -len("_sum")]
                sums[base] = sums.get(base, 0.0) + sample.value
    if QUEUE_DEPTH not in gauges:
        raise MetricsParseError(f"{pod}: no {QUEUE_DEPTH} in the metrics")
    histograms = {
        name: Histogram(
            buckets=tuple(sorted(bucket_counts.items())),
            count=counts.get(name, bucket_counts.get(INF, 0.0)),
            sum=sums.get(name, 0.0),
        )
        for name, bucket_counts in buckets.items()
        if bucket_counts
    }
    max_wait_s = gauges.get(CONFIG_MAX_WAIT)
    max_batch_size = gauges.get(CONFIG_MAX_BATCH_SIZE)
    generation = gauges.get(CONFIG_GENERATION)
    return PodSample(
        pod=pod,
        time=at,
        queue_depth=gauges[QUEUE_DEPTH],
        requests=requests,
        histograms=histograms,
        config=PodConfig(
            max_batch_size=None if max_batch_size is None else round(max_batch_size),
            max_wait_s=max_wait_s,
            generation=None if generation is None else round(generation),
        ),
    )
