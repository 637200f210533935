"""The load shapes of the loop benchmark, scaled to a peak rate (requests per second)."""

from __future__ import annotations

import math

from bench.loop.simulator import Trace


def step(peak: float, duration_s: float = 900.0) -> Trace:
    """A quarter of the peak, a 4x step up at one third, back down at two thirds."""
    a, b = duration_s / 3, 2 * duration_s / 3

    def rate(t: float) -> float:
        return peak if a <= t < b else peak / 4

    return Trace("step-4x", duration_s, rate, peak)


def diurnal(peak: float, duration_s: float = 900.0, low: float = 0.1) -> Trace:
    """One compressed day: from ``low * peak`` up to the peak and back, a raised cosine."""

    def rate(t: float) -> float:
        phase = 0.5 - 0.5 * math.cos(2 * math.pi * t / duration_s)
        return peak * (low + (1 - low) * phase)

    return Trace("diurnal", duration_s, rate, peak)


def bursts(
    peak: float, duration_s: float = 900.0, on_s: float = 60.0, off_s: float = 120.0
) -> Trace:
    """On/off: the peak for ``on_s``, a tenth of it for ``off_s``, repeated."""

    def rate(t: float) -> float:
        return peak if (t % (on_s + off_s)) >= off_s else peak / 10

    return Trace("on-off", duration_s, rate, peak)


def spike(peak: float, duration_s: float = 900.0, width_s: float = 30.0) -> Trace:
    """A third of the peak, with a short spike to the peak in the middle."""
    start = duration_s / 2

    def rate(t: float) -> float:
        return peak if start <= t < start + width_s else peak / 3

    return Trace("spike", duration_s, rate, peak)


def all_traces(peak: float, duration_s: float = 900.0) -> list[Trace]:
    return [
        step(peak, duration_s),
        diurnal(peak, duration_s),
        bursts(peak, duration_s),
        spike(peak, duration_s),
    ]
