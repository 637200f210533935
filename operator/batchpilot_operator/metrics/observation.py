"""Two successive scrapes compared into an :class:`Observation` of one window: counter and
histogram deltas (a pod whose counters went backwards restarted; its counters since the
restart are the window's), quantiles of the histograms summed across pods, the
service-time fit and the config each pod reports in force."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from batchpilot_contract.metrics import BATCH_DURATION_SECONDS as BATCH_DURATION
from batchpilot_contract.metrics import BATCH_SIZE, Outcome
from batchpilot_contract.metrics import QUEUE_WAIT_SECONDS as QUEUE_WAIT
from batchpilot_contract.metrics import REQUEST_DURATION_SECONDS as REQUEST_DURATION
from batchpilot_operator.metrics.histogram import Histogram, sum_histograms
from batchpilot_operator.metrics.parse import PodConfig, PodSample
from batchpilot_operator.metrics.scrape import Scrape
from batchpilot_operator.metrics.servicetime import ServicePoint, ServiceTimeFit, fit_service_time

OUTCOME_OK = Outcome.OK
"""The ``outcome`` label of a request answered successfully."""


@dataclass(frozen=True)
class Observation:
    """What the pods did over one window (between two scrapes). Rates are per second,
    durations in seconds; a quantile is None when its histogram had no observation."""

    time: float
    window_s: float
    pods_expected: int
    pods_scraped: int
    pods_paired: int
    """Pods scraped now and at the previous scrape: the ones the rates cover."""
    missing: Mapping[str, str]
    """Pods that did not answer now, with the reason. Their load is unknown, not zero."""
    restarted: tuple[str, ...]
    """Pods whose counters went backwards (their counters since the restart are counted)."""
    arrival_rate: float
    """Requests arriving per second at the paired pods (answered + change in queue)."""
    throughput: float
    """Requests answered ``ok`` per second by the paired pods."""
    outcomes: Mapping[str, float]
    """Requests answered in the window, by outcome."""
    queue_depth: float
    """Requests waiting now, summed over the scraped pods."""
    batches: float
    mean_batch_size: float | None
    mean_batch_duration_s: float | None
    utilization: float | None
    """Mean share of the window the paired pods spent executing batches."""
    latency: Histogram | None
    """Request duration histogram over the window, summed over paired pods."""
    queue_wait: Histogram | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    queue_wait_p50_s: float | None
    queue_wait_p95_s: float | None
    service_points: tuple[ServicePoint, ...]
    """This window's per-pod points; keep recent ones and pass them back as history."""
    service_fit: ServiceTimeFit | None
    """``t(b)`` fitted on the history given plus this window's points."""
    configs: Mapping[str, PodConfig]
    """The config each scraped pod reports in force."""
    new: tuple[str, ...] = ()
    """Pods not asked at the previous scrape: they started within the window, so their
    counters from zero are the window's."""

    @property
    def pods_missing(self) -> int:
        return len(self.missing)

    @property
    def complete(self) -> bool:
        """Every expected pod answered and has a baseline: the rates cover all the load."""
        return self.pods_expected > 0 and self.pods_paired == self.pods_expected

    @property
    def requests(self) -> float:
        """Requests answered in the window, all outcomes."""
        return sum(self.outcomes.values())

    @property
    def latency_samples(self) -> float:
        """Request durations observed in the window (the weight behind the quantiles)."""
        return self.latency.count if self.latency is not None else 0.0

    @property
    def min_config_generation(self) -> int | None:
        """The oldest config generation any scraped pod reports (None if none report)."""
        gens = [c.generation for c in self.configs.values() if c.generation is not None]
        return min(gens) if gens else None

    def fraction_within(self, target_s: float) -> float | None:
        """Share of the window's requests answered within ``target_s`` (interpolated)."""
        return self.latency.fraction_at_most(target_s) if self.latency is not None else None


def observe(
    previous: Scrape | None,
    current: Scrape,
    *,
    history: Sequence[ServicePoint] = (),
) -> Observation:
    """Compare two scrapes of the same set of pods into an :class:`Observation`.

    ``history`` is earlier windows' :class:`ServicePoint` values (a
    :class:`ServiceHistory`'s ``points()``) added to this window's for the service-time
    fit. Without a previous scrape (first tick) the rates cover no pod: ``pods_paired`` is
    0. A pod that was not asked at the previous scrape (it became ready since) counts from
    zero; one that was asked but did not answer has no baseline and stays unpaired this
    window.
    """
    prev_samples: Mapping[str, PodSample] = previous.samples if previous is not None else {}
    prev_pods = previous.pods if previous is not None else frozenset()
    window = current.time - previous.time if previous is not None else 0.0
    outcomes: dict[str, float] = {}
    latencies: list[Histogram] = []
    queue_waits: list[Histogram] = []
    points: list[ServicePoint] = []
    restarted: list[str] = []
    new: list[str] = []
    busy_shares: list[float] = []
    paired = 0
    batches = 0.0
    size_sum = 0.0
    duration_sum = 0.0
    queue_change = 0.0
    for pod, sample in sorted(current.samples.items()):
        before = prev_samples.get(pod)
        if window <= 0 or (before is None and pod in prev_pods) or previous is None:
            continue  # no baseline: missing at the previous scrape, or the first scrape
        paired += 1
        delta_requests: Mapping[str, float]
        if before is None or sample.went_backwards(before):
            # new since the previous scrape, or restarted: its counters began in the window
            (new if before is None else restarted).append(pod)
            delta_requests = sample.requests
            delta_histograms = dict(sample.histograms)
            queue_change += sample.queue_depth
        else:
            delta_requests = {
                k: v - before.requests.get(k, 0.0) for k, v in sample.requests.items()
            }
            delta_histograms = {
                name: h.minus(before.histograms[name]) if name in before.histograms else h
                for name, h in sample.histograms.items()
            }
            queue_change += sample.queue_depth - before.queue_depth
        for k, v in delta_requests.items():
            outcomes[k] = outcomes.get(k, 0.0) + v
        if REQUEST_DURATION in delta_histograms:
            latencies.append(delta_histograms[REQUEST_DURATION])
        if QUEUE_WAIT in delta_histograms:
            queue_waits.append(delta_histograms[QUEUE_WAIT])
        sizes = delta_histograms.get(BATCH_SIZE)
        durations = delta_histograms.get(BATCH_DURATION)
        if durations is not None:
            busy_shares.append(min(1.0, durations.sum / window))
        if sizes is not None and durations is not None and sizes.count > 0 and durations.count > 0:
            batches += sizes.count
            size_sum += sizes.sum
            duration_sum += durations.sum
            points.append(
                ServicePoint(
                    batch_size=sizes.sum / sizes.count,
                    duration_s=durations.sum / durations.count,
                    batches=sizes.count,
                )
            )
    answered = sum(outcomes.values())
    latency = sum_histograms(latencies)
    queue_wait = sum_histograms(queue_waits)

    def quantile_of(h: Histogram | None, quantile: float) -> float | None:
        return h.quantile(quantile) if h is not None else None

    return Observation(
        time=current.time,
        window_s=window,
        pods_expected=len(current.pods),
        pods_scraped=len(current.samples),
        pods_paired=paired,
        missing=dict(current.missing),
        restarted=tuple(restarted),
        new=tuple(new),
        arrival_rate=max(0.0, answered + queue_change) / window if window > 0 else 0.0,
        throughput=outcomes.get(OUTCOME_OK, 0.0) / window if window > 0 else 0.0,
        outcomes=outcomes,
        queue_depth=sum(s.queue_depth for s in current.samples.values()),
        batches=batches,
        mean_batch_size=size_sum / batches if batches > 0 else None,
        mean_batch_duration_s=duration_sum / batches if batches > 0 else None,
        utilization=sum(busy_shares) / len(busy_shares) if busy_shares else None,
        latency=latency,
        queue_wait=queue_wait,
        latency_p50_s=quantile_of(latency, 0.5),
        latency_p95_s=quantile_of(latency, 0.95),
        latency_p99_s=quantile_of(latency, 0.99),
        queue_wait_p50_s=quantile_of(queue_wait, 0.5),
        queue_wait_p95_s=quantile_of(queue_wait, 0.95),
        service_points=tuple(points),
        service_fit=fit_service_time([*history, *points]),
        configs={pod: s.config for pod, s in current.samples.items()},
    )
