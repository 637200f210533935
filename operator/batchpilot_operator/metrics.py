"""Observation: scrape every runtime pod's ``/metrics`` and turn two scrapes into a window.

The runtime exports the metrics contract (:mod:`batchpilot_contract.metrics`: ``batchpilot_*``
names, base units, fixed histogram buckets identical on every pod). This module

* scrapes a set of pods concurrently (:func:`scrape_pods`: per-pod timeout, a concurrency
  limit, a pod that does not answer is recorded as *missing*, never as zero load),
* parses one pod's text with prometheus_client's parser (:func:`parse_metrics`),
* and compares two successive scrapes (:func:`observe`) into an :class:`Observation`:
  counter and histogram deltas over the window (a pod whose counters went backwards
  restarted; its counters since the restart are the window's), quantiles of histograms
  summed across pods (interpolated as PromQL's ``histogram_quantile``), the service-time
  profile ``t(b) = a + c*b`` fitted on per-pod (mean batch size, mean batch duration)
  points, and the batching config each pod reports in force.

Nothing here talks to Kubernetes; the caller maps pods to URLs and keeps the previous
:class:`Scrape` (and, optionally, a :class:`ServiceHistory` of earlier windows' points)
between ticks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from batchpilot_contract.metrics import BATCH_DURATION_SECONDS as BATCH_DURATION
from batchpilot_contract.metrics import (
    BATCH_SIZE,
    CONFIG_GENERATION,
    CONFIG_MAX_BATCH_SIZE,
    QUEUE_DEPTH,
    REQUESTS_TOTAL,
    Outcome,
)
from batchpilot_contract.metrics import CONFIG_MAX_WAIT_SECONDS as CONFIG_MAX_WAIT
from batchpilot_contract.metrics import OUTCOME_LABEL as OUTCOME
from batchpilot_contract.metrics import QUEUE_WAIT_SECONDS as QUEUE_WAIT
from batchpilot_contract.metrics import REQUEST_DURATION_SECONDS as REQUEST_DURATION

HISTOGRAMS = (REQUEST_DURATION, QUEUE_WAIT, BATCH_SIZE, BATCH_DURATION)
GAUGES = (QUEUE_DEPTH, CONFIG_MAX_BATCH_SIZE, CONFIG_MAX_WAIT, CONFIG_GENERATION)

OUTCOME_OK = Outcome.OK
"""The ``outcome`` label of a request answered successfully."""

INF = math.inf


# --------------------------------------------------------------------------- histograms


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram: ``buckets`` are ``(upper bound, cumulative count)`` pairs,
    sorted by bound, the last one ``+Inf``."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    @property
    def mean(self) -> float | None:
        """``sum / count``, or None when empty."""
        return self.sum / self.count if self.count > 0 else None

    def minus(self, earlier: Histogram) -> Histogram:
        """This histogram less an earlier one of the same series (bounds matched by value)."""
        before = dict(earlier.buckets)
        return Histogram(
            buckets=tuple((le, max(0.0, c - before.get(le, 0.0))) for le, c in self.buckets),
            count=max(0.0, self.count - earlier.count),
            sum=max(0.0, self.sum - earlier.sum),
        )

    def went_backwards(self, earlier: Histogram) -> bool:
        """True when a count decreased: the process restarted between the two."""
        if self.count < earlier.count:
            return True
        before = dict(earlier.buckets)
        return any(c < before.get(le, 0.0) for le, c in self.buckets)

    def quantile(self, q: float) -> float | None:
        """See :func:`histogram_quantile`."""
        return histogram_quantile(q, self.buckets)

    def fraction_at_most(self, threshold: float) -> float | None:
        """See :func:`fraction_at_most`."""
        return fraction_at_most(threshold, self.buckets)


def sum_histograms(histograms: Iterable[Histogram]) -> Histogram | None:
    """Add histograms bucket by bucket (the union of bounds; a histogram lacking a bound
    contributes its cumulative count at its next lower bound). None when there are none."""
    hs = list(histograms)
    if not hs:
        return None
    bounds = sorted({le for h in hs for le, _ in h.buckets})
    totals = dict.fromkeys(bounds, 0.0)
    for h in hs:
        i = 0
        running = 0.0
        for le in bounds:
            while i < len(h.buckets) and h.buckets[i][0] <= le:
                running = h.buckets[i][1]
                i += 1
            totals[le] += running
    return Histogram(
        buckets=tuple((le, totals[le]) for le in bounds),
        count=sum(h.count for h in hs),
        sum=sum(h.sum for h in hs),
    )


def _monotonic(buckets: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted buckets with cumulative counts forced non-decreasing (as PromQL does)."""
    out: list[tuple[float, float]] = []
    running = 0.0
    for le, c in sorted(buckets):
        running = max(running, c)
        out.append((le, running))
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly inside the bucket
    that holds it, like PromQL's ``histogram_quantile``: the lowest bucket starts at 0 (when
    its bound is positive), and a quantile in the ``+Inf`` bucket is the highest finite bound.
    None when the histogram is empty or has no ``+Inf`` bucket."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    bs = _monotonic(buckets)
    if not bs or bs[-1][0] != INF:
        return None
    total = bs[-1][1]
    if total <= 0:
        return None
    rank = q * total
    i = next(j for j, (_, c) in enumerate(bs) if c >= rank)
    le, c = bs[i]
    if le == INF:
        return bs[-2][0] if len(bs) >= 2 else None
    lower, below = (0.0, 0.0) if i == 0 else bs[i - 1]
    if i == 0 and le <= 0:
        return le
    if c == below:
        return le
    return lower + (le - lower) * (rank - below) / (c - below)


def fraction_at_most(threshold: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The share of observations at or below ``threshold``, interpolated linearly inside a
    bucket (the inverse of :func:`histogram_quantile`). None when the histogram is empty."""
    bs = _monotonic(buckets)
    if not bs or bs[-1][0] != INF or bs[-1][1] <= 0:
        return None
    total = bs[-1][1]
    lower, below = 0.0, 0.0
    for le, c in bs:
        if threshold < le:
            if le == INF:
                return below / total
            span = le - lower
            part = (threshold - lower) / span if span > 0 else 1.0
            return (below + max(0.0, part) * (c - below)) / total
        lower, below = le, c
    return 1.0


# --------------------------------------------------------------------------- parsing


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
        for s in family.samples:
            name = s.name
            if name == REQUESTS_TOTAL:
                outcome = s.labels.get(OUTCOME, "")
                requests[outcome] = requests.get(outcome, 0.0) + s.value
            elif name in GAUGES:
                gauges[name] = gauges.get(name, 0.0) + s.value
            elif name.endswith("_bucket") and name[: -len("_bucket")] in buckets:
                le = float(s.labels["le"])
                b = buckets[name[: -len("_bucket")]]
                b[le] = b.get(le, 0.0) + s.value
            elif name.endswith("_count") and name[: -len("_count")] in buckets:
                base = name[: -len("_count")]
                counts[base] = counts.get(base, 0.0) + s.value
            elif name.endswith("_sum") and name[: -len("_sum")] in buckets:
                base = name[: -len("_sum")]
                sums[base] = sums.get(base, 0.0) + s.value
    if QUEUE_DEPTH not in gauges:
        raise MetricsParseError(f"{pod}: no {QUEUE_DEPTH} in the metrics")
    histograms = {
        name: Histogram(
            buckets=tuple(sorted(b.items())),
            count=counts.get(name, b.get(INF, 0.0)),
            sum=sums.get(name, 0.0),
        )
        for name, b in buckets.items()
        if b
    }
    wait = gauges.get(CONFIG_MAX_WAIT)
    size = gauges.get(CONFIG_MAX_BATCH_SIZE)
    gen = gauges.get(CONFIG_GENERATION)
    return PodSample(
        pod=pod,
        time=at,
        queue_depth=gauges[QUEUE_DEPTH],
        requests=requests,
        histograms=histograms,
        config=PodConfig(
            max_batch_size=None if size is None else round(size),
            max_wait_s=wait,
            generation=None if gen is None else round(gen),
        ),
    )


# --------------------------------------------------------------------------- scraping


@dataclass(frozen=True)
class Scrape:
    """The pods' metrics at one instant: the samples that came back, and the pods that did
    not answer (or answered something unusable) with the reason."""

    time: float
    samples: Mapping[str, PodSample]
    missing: Mapping[str, str] = field(default_factory=dict)

    @property
    def pods(self) -> frozenset[str]:
        """Every pod that was asked."""
        return frozenset(self.samples) | frozenset(self.missing)


async def scrape_pods(
    targets: Mapping[str, str],
    *,
    timeout_s: float = 2.0,
    concurrency: int = 16,
    client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Scrape:
    """Fetch ``targets`` (pod name -> full ``/metrics`` URL) concurrently, at most
    ``concurrency`` at once, each bounded by ``timeout_s``. A pod that times out, refuses,
    answers non-200 or unparseable text is recorded in ``missing`` with the reason."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    limit = asyncio.Semaphore(concurrency)
    own = client is None
    http = client if client is not None else httpx.AsyncClient(timeout=timeout_s)

    async def one(pod: str, url: str) -> PodSample | str:
        async with limit:
            try:
                async with asyncio.timeout(timeout_s):
                    resp = await http.get(url, timeout=timeout_s)
            except TimeoutError:
                return f"timed out after {timeout_s:g}s"
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            at = clock()
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}"
        try:
            return parse_metrics(resp.text, pod=pod, at=at)
        except MetricsParseError as exc:
            return str(exc)

    try:
        pods = list(targets)
        results = await asyncio.gather(*(one(p, targets[p]) for p in pods))
    finally:
        if own:
            await http.aclose()
    samples: dict[str, PodSample] = {}
    missing: dict[str, str] = {}
    for pod, result in zip(pods, results, strict=True):
        if isinstance(result, PodSample):
            samples[pod] = result
        else:
            missing[pod] = result
    return Scrape(time=clock(), samples=samples, missing=missing)


# --------------------------------------------------------------------------- service time


@dataclass(frozen=True)
class ServicePoint:
    """One pod over one window: mean executed batch size and mean batch duration."""

    batch_size: float
    duration_s: float
    batches: float


@dataclass(frozen=True)
class ServiceTimeFit:
    """``t(b) = intercept_s + per_item_s * b``: model execution time of a batch of ``b``."""

    intercept_s: float
    per_item_s: float
    points: int
    size_range: tuple[float, float]
    """The smallest and largest mean batch size the fit saw."""

    def duration(self, batch_size: float) -> float:
        """Predicted execution time of a batch of ``batch_size`` items, in seconds."""
        return self.intercept_s + self.per_item_s * batch_size

    def throughput(self, batch_size: float) -> float:
        """Items per second of one busy replica running batches of ``batch_size``."""
        return batch_size / self.duration(batch_size)


def fit_service_time(
    points: Iterable[ServicePoint], *, min_points: int = 4, min_spread: float = 0.5
) -> ServiceTimeFit | None:
    """Weighted least squares (weight: batches) of duration on batch size. None when there
    are fewer than ``min_points`` points, when their sizes span less than ``min_spread``
    items (the slope would be noise), or when the fit is not physical (negative slope)."""
    pts = [p for p in points if p.batches > 0 and p.batch_size > 0 and p.duration_s > 0]
    if len(pts) < min_points:
        return None
    lo = min(p.batch_size for p in pts)
    hi = max(p.batch_size for p in pts)
    if hi - lo < min_spread:
        return None
    w = sum(p.batches for p in pts)
    mb = sum(p.batches * p.batch_size for p in pts) / w
    mt = sum(p.batches * p.duration_s for p in pts) / w
    sxx = sum(p.batches * (p.batch_size - mb) ** 2 for p in pts)
    sxy = sum(p.batches * (p.batch_size - mb) * (p.duration_s - mt) for p in pts)
    if sxx <= 0:
        return None
    slope = sxy / sxx
    if slope <= 0:
        return None
    intercept = mt - slope * mb
    if intercept < 0:
        # Force through the origin rather than predict negative times for small batches.
        intercept = 0.0
        slope = sum(p.batches * p.batch_size * p.duration_s for p in pts) / sum(
            p.batches * p.batch_size**2 for p in pts
        )
    return ServiceTimeFit(
        intercept_s=intercept, per_item_s=slope, points=len(pts), size_range=(lo, hi)
    )


class ServiceHistory:
    """Recent :class:`ServicePoint` values for the fit, kept per batch-size band (bands a
    factor of sqrt(2) wide, the newest ``per_band`` points in each).

    ``t(b)`` belongs to the model and the hardware, not to the load: a quiet spell runs small
    batches only, and a plain "last N points" history would then forget the large batches a
    busy spell measured, lose the fit's spread and leave replicas sized from the busy share,
    which underestimates what a batching replica carries. Bounded: a batch size of 1024
    gives 21 bands."""

    def __init__(self, per_band: int = 8) -> None:
        if per_band < 1:
            raise ValueError(f"per_band must be at least 1, got {per_band}")
        self.per_band = per_band
        self._bands: dict[int, deque[ServicePoint]] = {}

    def extend(self, points: Iterable[ServicePoint]) -> None:
        """Add one window's points; each band keeps only its newest ``per_band``."""
        for p in points:
            band = round(2 * math.log2(max(p.batch_size, 1.0)))
            self._bands.setdefault(band, deque(maxlen=self.per_band)).append(p)

    def points(self) -> tuple[ServicePoint, ...]:
        """Every point kept, smallest batch sizes first."""
        return tuple(p for band in sorted(self._bands) for p in self._bands[band])

    def __len__(self) -> int:
        return sum(len(band) for band in self._bands.values())


# --------------------------------------------------------------------------- observation


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
    lat: list[Histogram] = []
    qwait: list[Histogram] = []
    points: list[ServicePoint] = []
    restarted: list[str] = []
    new: list[str] = []
    busy: list[float] = []
    paired = 0
    batches = 0.0
    size_sum = 0.0
    dur_sum = 0.0
    queue_change = 0.0
    for pod, now in sorted(current.samples.items()):
        before = prev_samples.get(pod)
        if window <= 0 or (before is None and pod in prev_pods) or previous is None:
            continue  # no baseline: missing at the previous scrape, or the first scrape
        paired += 1
        delta_req: Mapping[str, float]
        if before is None or now.went_backwards(before):
            # new since the previous scrape, or restarted: its counters began in the window
            (new if before is None else restarted).append(pod)
            delta_req = now.requests
            delta_h = dict(now.histograms)
            queue_change += now.queue_depth
        else:
            delta_req = {k: v - before.requests.get(k, 0.0) for k, v in now.requests.items()}
            delta_h = {
                name: h.minus(before.histograms[name]) if name in before.histograms else h
                for name, h in now.histograms.items()
            }
            queue_change += now.queue_depth - before.queue_depth
        for k, v in delta_req.items():
            outcomes[k] = outcomes.get(k, 0.0) + v
        if REQUEST_DURATION in delta_h:
            lat.append(delta_h[REQUEST_DURATION])
        if QUEUE_WAIT in delta_h:
            qwait.append(delta_h[QUEUE_WAIT])
        size_h = delta_h.get(BATCH_SIZE)
        dur_h = delta_h.get(BATCH_DURATION)
        if dur_h is not None:
            busy.append(min(1.0, dur_h.sum / window))
        if size_h is not None and dur_h is not None and size_h.count > 0 and dur_h.count > 0:
            batches += size_h.count
            size_sum += size_h.sum
            dur_sum += dur_h.sum
            points.append(
                ServicePoint(
                    batch_size=size_h.sum / size_h.count,
                    duration_s=dur_h.sum / dur_h.count,
                    batches=size_h.count,
                )
            )
    answered = sum(outcomes.values())
    latency = sum_histograms(lat)
    wait = sum_histograms(qwait)

    def q(h: Histogram | None, quantile: float) -> float | None:
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
        mean_batch_duration_s=dur_sum / batches if batches > 0 else None,
        utilization=sum(busy) / len(busy) if busy else None,
        latency=latency,
        queue_wait=wait,
        latency_p50_s=q(latency, 0.5),
        latency_p95_s=q(latency, 0.95),
        latency_p99_s=q(latency, 0.99),
        queue_wait_p50_s=q(wait, 0.5),
        queue_wait_p95_s=q(wait, 0.95),
        service_points=tuple(points),
        service_fit=fit_service_time([*history, *points]),
        configs={pod: s.config for pod, s in current.samples.items()},
    )
