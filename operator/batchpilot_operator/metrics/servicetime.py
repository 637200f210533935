"""The service-time profile ``t(b) = a + c*b``: per-pod (mean batch size, mean batch
duration) points, the weighted fit on them, and the history of points kept between
windows."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


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
