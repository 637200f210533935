"""The policy's spec: the BatchedModel's bounds and target, and every constant of the
policy, in one typed place (no rule has a bare literal)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TuningSpec:
    """The bounds and target of the loop (the BatchedModel's ``spec.autoscaling``), plus the
    policy's own constants. Times in milliseconds or seconds as named."""

    latency_target_ms: float = 100.0
    """The request p95 to hold."""
    min_replicas: int = 1
    """Fewest replicas (a floor for traffic that jumps faster than a pod starts)."""
    max_replicas: int = 4
    """Most replicas (the GPU budget)."""
    min_batch_size: int = 1
    """Bounds of the batch size the loop may write."""
    max_batch_size: int = 128
    """(See ``min_batch_size``.)"""
    min_wait_ms: float = 0.0
    """Bounds of the batch wait the loop may write."""
    max_wait_ms: float = 50.0
    """(See ``min_wait_ms``.)"""
    interval_s: float = 15.0
    """Seconds between ticks: one metrics window each."""
    scale_down_delay_s: float = 120.0
    """Low load must last this long before replicas are removed."""
    # The policy's constants (not in the API).
    target_utilization: float = 0.7
    """Replicas are first sized so that they are busy this share of the time (the headroom);
    the measured p95 then moves it between ``min_utilization`` and ``max_utilization``."""
    min_utilization: float = 0.5
    """The least the measured p95 may lower the utilisation target to."""
    max_utilization: float = 0.8
    """The most the measured p95 may raise the utilisation target to."""
    utilization_step: float = 0.05
    """Added to the utilisation target when the p95 is well inside the target."""
    latency_budget: float = 0.8
    """Share of the target the modelled worst case ``2*t(b) + wait`` may use."""
    wait_share: float = 0.0
    """Share of the target given to the batch wait (kept within the spec's wait bounds).
    None by default: a replica that dispatches what waits whenever a batch slot frees fills
    its batches under load by itself, and a wait then only adds latency (the loop benchmark
    measures both). ``minWaitMs`` in the spec sets a floor."""
    min_latency_samples: int = 20
    """Fewer request latencies than this in a window: the p95 is not used."""
    decrease_factor: float = 0.7
    """Batch size multiplier on a p95 miss that is not overload."""
    increase_step: int = 2
    """Batch size added when the p95 is well inside the target and batches fill."""
    well_inside: float = 0.6
    """A p95 under this share of the target is well inside."""
    overload_utilization: float = 0.9
    """Busy share above which a p95 miss is overload (more replicas, not smaller batches)."""
    outside_share: float = 0.5
    """A p95 miss of which more than this share of the target is spent outside the batcher
    (the p95 minus the p95 queue wait and the mean batch time: the HTTP layer, an event
    loop short of CPU) is overload of the pod, not a batch size problem. It asks for a
    replica only when the window before was overloaded too: one such window is as often a
    stall."""
    debt_payback_s: float = 30.0
    """The queue is debt: replicas are added to pay it back within this long (or one
    interval, if longer)."""
    scale_down_step: float = 0.25
    """Most replicas removed in one decision, as a share of the current count (at least 1)."""
    max_delay_factor: float = 4.0
    """How far flaps may lengthen the scale-down delay, as a multiple of the spec's."""
    taper_share: float = 0.25
    """When the need fell steadily through the whole delay (see ``taper_step``), replicas
    follow it down to the highest need of this share of the delay: a load tapering off is
    not a burst that ended and may come back."""
    taper_step: float = 0.1
    """A steady fall: the need never went above where it started, fell by at most this
    share (at least one replica) from one tick to the next, and by two replicas or more in
    all."""
    startup_starve_factor: float = 2.0
    """While a pod starts, serving pods whose batches run this many times slower than the
    service-time fit says are losing their compute to the start-up: the pods share it (one
    node's CPU, a shared accelerator), so the new replica cannot add capacity. The start is
    cancelled and the replicas held."""
    no_room_s: float = 300.0
    """How long, after that, the replicas stay at most at the count that served."""
    fill_share: float = 0.8
    """Batches fill when their mean size reaches this share of the size limit."""
    judged_after_intervals: float = 2.0
    """A window's p95 judges the config only this many intervals after the config changed:
    a window that began before the change mixes the old config's latencies into it."""
    previous_window_intervals: float = 1.5
    """A tick at most this many intervals ago was the one before (ticks jitter)."""
    backlog_intervals: float = 3.0
    """A miss within this many intervals of a scale-up is the backlog from before it."""
    least_busy_share: float = 0.05
    """Below this busy share a replica's capacity is not read from it (too little work)."""
    wait_step_ms: float = 0.5
    """The wait is chosen in steps of this."""
    wait_change_ms: float = 1.0
    """(See ``wait_change_share``.)"""
    wait_change_share: float = 0.25
    """The wait follows its rule only when it differs by more than the larger of these
    (absolute, and a share of the wait in force): no churn for a rounding difference."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= min_replicas <= max_replicas")
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ValueError("need 1 <= min_batch_size <= max_batch_size")
        if not 0 <= self.min_wait_ms <= self.max_wait_ms:
            raise ValueError("need 0 <= min_wait_ms <= max_wait_ms")
        if self.latency_target_ms <= 0 or self.interval_s <= 0:
            raise ValueError("latency_target_ms and interval_s must be positive")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be within (0, 1]")

    @property
    def latency_target_s(self) -> float:
        return self.latency_target_ms / 1000.0

    @classmethod
    def from_autoscaling(cls, autoscaling: Any, **policy: Any) -> TuningSpec:
        """Build from the API's ``Autoscaling`` (snake_case attributes) or from its JSON form
        (a mapping with camelCase keys, as in the custom resource). ``policy`` overrides the
        policy's constants."""

        def get(snake: str, camel: str) -> Any:
            if isinstance(autoscaling, Mapping):
                return autoscaling.get(camel, autoscaling.get(snake, getattr(cls, snake)))
            return getattr(autoscaling, snake, getattr(cls, snake))

        return cls(
            latency_target_ms=float(get("latency_target_ms", "latencyTargetMs")),
            min_replicas=int(get("min_replicas", "minReplicas")),
            max_replicas=int(get("max_replicas", "maxReplicas")),
            min_batch_size=int(get("min_batch_size", "minBatchSize")),
            max_batch_size=int(get("max_batch_size", "maxBatchSize")),
            min_wait_ms=float(get("min_wait_ms", "minWaitMs")),
            max_wait_ms=float(get("max_wait_ms", "maxWaitMs")),
            interval_s=float(
                autoscaling.get("intervalSeconds", cls.interval_s)
                if isinstance(autoscaling, Mapping)
                else getattr(autoscaling, "interval_seconds", cls.interval_s)
            ),
            scale_down_delay_s=float(
                autoscaling.get("scaleDownDelaySeconds", cls.scale_down_delay_s)
                if isinstance(autoscaling, Mapping)
                else getattr(autoscaling, "scale_down_delay_seconds", cls.scale_down_delay_s)
            ),
            **policy,
        )
