"""Cumulative histograms as the runtime exports them: deltas between scrapes, sums across
pods, and quantiles interpolated as PromQL's ``histogram_quantile``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

INF = math.inf


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
