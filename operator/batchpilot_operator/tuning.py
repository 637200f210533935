"""Policy: from an observation, decide replicas, max batch size and max wait. Pure: no I/O.

``decide(observation, current, spec, now) -> Decision`` is called once per tick by the
actuation. It

1. holds when the observation covers no pod (first tick, every pod missing);
2. models the service time ``t(b) = a + c*b`` (fitted from the pods' batch sizes and
   durations), reserves a share of the target for the batch wait (none by default, see
   ``TuningSpec.wait_share``), and picks the largest
   batch size whose worst case under load, a batch in execution plus the wait plus its own
   batch (``2*t(b) + wait``), fits in a share of the latency target: the most throughput per
   replica (``b / t(b)``) that meets the target;
3. corrects from the measured p95: on a miss that is not overload, multiplicative decrease
   of the batch size; when well inside the target and batches fill, additive increase; and
   the replicas' target utilisation (the headroom) moves the same way, down
   multiplicatively on a miss that is not overload, up additively when well inside. A miss
   while a backlog drains (replicas just added, or overload seen within a window plus the
   p95, so the requests answered now waited through it) counts as overload. A miss that is
   not overload is acted on only when the window before missed too: one window's stall
   (a paused process, a noisy neighbour) is not a config problem;
4. sizes replicas to carry the arrival rate plus the queue as debt to pay back (within
   ``debt_payback_s``), at that utilisation. A missing pod is assumed to carry the mean
   load of the pods that answered, and partial data may only scale up;
5. scales up at once; scales down only to the highest recommendation of the last
   ``scale_down_delay_s`` (which must be covered by observations), by a bounded step. A
   scale-up within that delay after a scale-down (a flap: bursts with gaps about the
   delay's length) doubles the delay for the next scale-down, up to ``max_delay_factor``
   times; a later scale-up halves it back. When the recommendations fell steadily through
   the whole delay (a load tapering off, not a burst that ended), the scale-down follows
   the highest of the last ``taper_share`` of it;
6. never changes the config while the pods still report an older generation than the one
   last written, does not touch the config on too few latency samples, and judges a p95
   only on a window that ran the current config from its start;
7. keeps every value inside the spec's bounds.

Every :class:`Decision` carries a reason. The caller keeps :class:`CurrentState` between
ticks; :meth:`Decision.next_state` gives the state to keep after applying a decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from batchpilot_operator.metrics import Observation, ServiceTimeFit


@dataclass(frozen=True)
class TuningSpec:
    """The bounds and target of the loop (the BatchedModel's ``spec.autoscaling``), plus the
    policy's own constants. Times in milliseconds or seconds as named."""

    latency_target_ms: float = 100.0
    min_replicas: int = 1
    max_replicas: int = 4
    min_batch_size: int = 1
    max_batch_size: int = 128
    min_wait_ms: float = 0.0
    max_wait_ms: float = 50.0
    interval_s: float = 15.0
    scale_down_delay_s: float = 120.0
    # The policy's constants (not in the API).
    target_utilization: float = 0.7
    """Replicas are first sized so that they are busy this share of the time (the headroom);
    the measured p95 then moves it between ``min_utilization`` and ``max_utilization``."""
    min_utilization: float = 0.5
    max_utilization: float = 0.8
    utilization_step: float = 0.05
    """Added to the utilisation target when the p95 is well inside the target."""
    latency_budget: float = 0.8
    """Share of the target the modelled worst case ``2*t(b) + wait`` may use."""
    wait_share: float = 0.0
    """Share of the target given to the batch wait (kept within the spec's wait bounds).
    None by default: a replica that dispatches what waits whenever a batch slot frees fills
    its batches under load by itself, and a wait then only adds latency. In the loop
    simulator on the measured profile, one replica at 80% busy had a p95 of 151 ms with no
    wait and 200 ms with a 25 ms one, at the same throughput; near saturation the share
    within target was 88% against 82%. ``minWaitMs`` in the spec sets a floor."""
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


@dataclass(frozen=True)
class CurrentState:
    """What the loop last asked for, and the memory it needs between ticks."""

    replicas: int
    """Replicas on the Deployment now (desired, not necessarily ready)."""
    max_batch_size: int
    """The config last written to the ConfigMap."""
    max_wait_ms: float
    generation: int
    """The generation of the config last written; pods reporting less still run an older one."""
    last_scale_up: float | None = None
    last_scale_down: float | None = None
    last_config_change: float | None = None
    recommendations: tuple[tuple[float, int], ...] = ()
    """Recent ``(time, replicas)`` recommendations: the scale-down stabilisation window."""
    utilization_target: float | None = None
    """The headroom learnt from the p95 so far (None: the spec's ``target_utilization``)."""
    last_overload: float | None = None
    """When a window last showed overload (saturated pods or a deep queue): requests answered
    for a while after it waited through it."""
    last_miss: float | None = None
    """When a judged window last missed the target without overload: a second miss in a row
    confirms it."""
    scale_down_delay_s: float | None = None
    """The scale-down delay in force: doubled by a flap (a scale-up within the spec's delay
    after a scale-down), halved by a scale-up that is not one. None: the spec's."""


@dataclass(frozen=True)
class Decision:
    """What to run next, and why."""

    action: str
    """``hold``, or the changes joined by ``+``: ``scale-up``, ``scale-down``, ``retune``."""
    replicas: int
    max_batch_size: int
    max_wait_ms: float
    reason: str
    replicas_changed: bool
    config_changed: bool
    recommendations: tuple[tuple[float, int], ...]
    """Keep in :class:`CurrentState` for the next tick (see :meth:`next_state`)."""
    utilization_target: float | None = None
    """Keep in :class:`CurrentState` for the next tick (see :meth:`next_state`)."""
    last_overload: float | None = None
    """Keep in :class:`CurrentState` for the next tick (see :meth:`next_state`)."""
    last_miss: float | None = None
    """Keep in :class:`CurrentState` for the next tick (see :meth:`next_state`)."""
    scale_down_delay_s: float | None = None
    """Keep in :class:`CurrentState` for the next tick (see :meth:`next_state`)."""
    needed_replicas: int | None = None
    """The replicas the observed load needs now, within the bounds (None: not sized, as when
    metrics are missing). ``replicas`` stays above it while a scale-down waits its delay."""

    def next_state(self, current: CurrentState, now: float) -> CurrentState:
        """The state to keep once this decision is applied: a config change bumps the
        generation (write it into the ConfigMap with the new values)."""
        up = self.replicas > current.replicas
        down = self.replicas < current.replicas
        return replace(
            current,
            replicas=self.replicas,
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            generation=current.generation + 1 if self.config_changed else current.generation,
            last_scale_up=now if up else current.last_scale_up,
            last_scale_down=now if down else current.last_scale_down,
            last_config_change=now if self.config_changed else current.last_config_change,
            recommendations=self.recommendations,
            utilization_target=self.utilization_target,
            last_overload=self.last_overload,
            last_miss=self.last_miss,
            scale_down_delay_s=self.scale_down_delay_s,
        )


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


def _hold(current: CurrentState, spec: TuningSpec, reason: str) -> Decision:
    replicas = int(_clamp(current.replicas, spec.min_replicas, spec.max_replicas))
    size = int(_clamp(current.max_batch_size, spec.min_batch_size, spec.max_batch_size))
    wait = _clamp(current.max_wait_ms, spec.min_wait_ms, spec.max_wait_ms)
    changes = []
    if replicas != current.replicas:
        changes.append(f"replicas {current.replicas}->{replicas}")
    if size != current.max_batch_size or wait != current.max_wait_ms:
        changes.append("batching config")
    if changes:
        return _decision(
            current,
            replicas,
            size,
            wait,
            f"{reason}; brought {' and '.join(changes)} inside the spec's bounds",
            current.recommendations,
        )
    return _decision(current, replicas, size, wait, reason, current.recommendations)


def _decision(
    current: CurrentState,
    replicas: int,
    size: int,
    wait_ms: float,
    reason: str,
    recommendations: tuple[tuple[float, int], ...],
) -> Decision:
    replicas_changed = replicas != current.replicas
    config_changed = size != current.max_batch_size or wait_ms != current.max_wait_ms
    parts = []
    if replicas > current.replicas:
        parts.append("scale-up")
    elif replicas < current.replicas:
        parts.append("scale-down")
    if config_changed:
        parts.append("retune")
    return Decision(
        action="+".join(parts) or "hold",
        replicas=replicas,
        max_batch_size=size,
        max_wait_ms=wait_ms,
        reason=reason,
        replicas_changed=replicas_changed,
        config_changed=config_changed,
        recommendations=recommendations,
        # the memory a hold does not touch carries over
        utilization_target=current.utilization_target,
        last_overload=current.last_overload,
        last_miss=current.last_miss,
        scale_down_delay_s=current.scale_down_delay_s,
    )


def _chosen_wait_ms(spec: TuningSpec) -> float:
    """The wait: its share of the target, within bounds, in steps of 0.5 ms."""
    wait_s = _clamp(
        spec.wait_share * spec.latency_target_s, spec.min_wait_ms / 1000, spec.max_wait_ms / 1000
    )
    return round(wait_s * 1000.0 * 2) / 2


def _model_choice(fit: ServiceTimeFit, spec: TuningSpec) -> int:
    """The largest batch size whose modelled worst case under load, ``2*t(b) + wait``, fits
    the budget."""
    budget = spec.latency_budget * spec.latency_target_s
    wait_s = _chosen_wait_ms(spec) / 1000
    best = spec.min_batch_size
    for b in range(spec.min_batch_size, spec.max_batch_size + 1):
        if 2 * fit.duration(b) + wait_s <= budget:
            best = b
        else:
            break
    return best


def _batches_fill(obs: Observation, max_batch_size: int) -> bool:
    """Whether the executed batches reach the size limit (on average, 80% of it)."""
    return obs.mean_batch_size is not None and obs.mean_batch_size >= 0.8 * max_batch_size


def _choose_config(
    obs: Observation,
    current: CurrentState,
    spec: TuningSpec,
    p95_ms: float | None,
    enough: bool,
    overloaded: bool,
    confirmed: bool,
    now: float,
) -> tuple[int, float, str]:
    """The batch size and wait to run next, with the reason."""
    target_ms = spec.latency_target_ms
    size = int(_clamp(current.max_batch_size, spec.min_batch_size, spec.max_batch_size))
    wait = _clamp(current.max_wait_ms, spec.min_wait_ms, spec.max_wait_ms)
    gen = obs.min_config_generation
    if gen is None or gen < current.generation:
        reported = "none" if gen is None else str(gen)
        return (
            size,
            wait,
            (
                f"config generation {current.generation} not yet in force "
                f"(pods report {reported}): config held"
            ),
        )
    if not obs.complete:
        return size, wait, "config held on partial data"
    if not _judged(current, spec, now):
        return (
            size,
            wait,
            (
                f"config generation {current.generation} not yet in force for a whole window:"
                " its p95 is not judged yet, config held"
            ),
        )
    if not enough or p95_ms is None:
        return (
            size,
            wait,
            (
                f"only {obs.latency_samples:.0f} latency samples "
                f"(< {spec.min_latency_samples}): config held"
            ),
        )
    missed = p95_ms > target_ms
    if missed and not overloaded and not confirmed:
        note = (
            f"p95 {p95_ms:.0f} ms > target {target_ms:g} ms without overload, in one window: "
            "config held unless the next window misses too"
        )
    elif missed and not overloaded:
        size = math.floor(size * spec.decrease_factor)
        wait = wait / 2
        note = (
            f"p95 {p95_ms:.0f} ms > target {target_ms:g} ms without overload, two windows "
            f"in a row: batch x{spec.decrease_factor:g}, wait halved"
        )
    elif missed:
        note = (
            f"p95 {p95_ms:.0f} ms > target {target_ms:g} ms under overload: "
            "batch kept, replicas carry it"
        )
    elif p95_ms < spec.well_inside * target_ms and _batches_fill(obs, size):
        size = size + spec.increase_step
        note = (
            f"p95 {p95_ms:.0f} ms well inside {target_ms:g} ms and batches fill: "
            f"batch +{spec.increase_step}"
        )
    else:
        note = f"p95 {p95_ms:.0f} ms within target {target_ms:g} ms"
    fit = obs.service_fit
    if fit is not None and not (missed and overloaded):
        model_size = _model_choice(fit, spec)
        if model_size < size:
            size = model_size
            note += (
                f"; service time t(b) = {fit.intercept_s * 1e3:.1f} + "
                f"{fit.per_item_s * 1e3:.2f}*b ms caps batch at {model_size}"
            )
    # The wait needs no service-time model. It follows the rule only on a clear difference
    # (no churn), and not on a miss, where the correction above has the say.
    chosen_wait = _chosen_wait_ms(spec)
    if not missed and abs(chosen_wait - wait) > max(1.0, 0.25 * wait):
        wait = chosen_wait
        note += f"; wait {wait:g} ms"
    size = int(_clamp(size, spec.min_batch_size, spec.max_batch_size))
    wait = _clamp(wait, spec.min_wait_ms, spec.max_wait_ms)
    return size, wait, note


def _recommend_replicas(
    obs: Observation,
    spec: TuningSpec,
    size: int,
    rate: float,
    demand: float,
    busy: float,
    busy_share_exact: bool,
    replicas: int,
) -> tuple[int | None, str]:
    """Replicas that carry ``demand`` at the target utilisation, or None when the capacity of
    a replica is unknown (no service-time fit and no busy share) while there is demand.

    Without a fit the capacity comes from the busy share at the batch size the pods ran, a
    lower bound while batches do not fill (more load fills them, and a fuller batch carries
    more per second): the count it gives may then lower the replicas, but raises them only
    when ``busy_share_exact`` (the pods saturated, or their batches full: a batch of one
    carries what it carries)."""
    if demand <= 0:
        # Nothing arrived and nothing waits: one replica would do, whatever a replica carries
        # (an idle model runs no batches, so neither the fit nor the busy share may exist).
        return 1, "no demand (no arrivals, no queue): 1 would do"
    fit = obs.service_fit
    util = obs.utilization
    if fit is not None:
        budget = spec.latency_budget * spec.latency_target_s
        b = size
        # the batch size reached under load is capped by the config and by the budget
        while b > 1 and 2 * fit.duration(b) > budget:
            b -= 1
        capacity = fit.throughput(b)
        how = f"{capacity:.0f}/s per replica at t({b}) = {fit.duration(b) * 1e3:.1f} ms"
    elif util is not None and util > 0.05 and obs.throughput > 0:
        capacity = (obs.throughput / obs.pods_paired) / util
        how = f"{capacity:.0f}/s per replica from busy share {util:.2f}"
    else:
        return None, "no executed batches to size replicas from"
    need = max(1, math.ceil(demand / (capacity * busy) - 1e-9))
    if fit is None and need > replicas and not busy_share_exact:
        return replicas, (
            f"demand {demand:.1f}/s, {how} (batches of {obs.mean_batch_size or 0:.1f}: "
            f"a lower bound while they do not fill): {replicas} kept until a fit"
        )
    return need, (
        f"demand {demand:.1f}/s (arrivals {rate:.1f}/s + queue {obs.queue_depth:.0f}), {how}, "
        f"{need} at {busy:.0%} busy"
    )


def _judged(current: CurrentState, spec: TuningSpec, now: float) -> bool:
    """Whether this window ran the current config from its start: a window that began
    before the last config change mixes the old config's latencies (and the switch) into
    the p95, which must not be read as the new config's."""
    changed = current.last_config_change
    return changed is None or now - changed >= 2 * spec.interval_s - 1e-9


def _utilization_target(
    obs: Observation,
    current: CurrentState,
    spec: TuningSpec,
    p95_ms: float | None,
    enough: bool,
    confirmed: bool,
    now: float,
) -> float:
    """The headroom, corrected from the measured p95: a confirmed miss without overload
    (see :func:`decide`) lowers the utilisation target multiplicatively, a p95 well inside
    the target raises it additively. A miss under overload leaves it: the replicas were
    short of the demand, which the demand already counts, and less headroom then would keep
    the extra replicas long after the backlog is paid."""
    busy = current.utilization_target or spec.target_utilization
    if enough and p95_ms is not None and obs.complete and _judged(current, spec, now):
        if p95_ms > spec.latency_target_ms:
            if confirmed:  # a second miss in a row, without overload
                busy *= spec.decrease_factor
        elif p95_ms < spec.well_inside * spec.latency_target_ms:
            busy += spec.utilization_step
    return _clamp(busy, spec.min_utilization, spec.max_utilization)


def _delay_after_scale_up(
    current: CurrentState, spec: TuningSpec, now: float, delay: float, notes: list[str]
) -> float:
    """The scale-down delay once this scale-up is applied. A scale-up within the spec's delay
    after a scale-down is a flap: the load came back before the replicas could have started,
    so the next scale-down waits twice as long (bursts with gaps about the delay's length).
    A scale-up after a longer quiet spell halves it back."""
    down = current.last_scale_down
    if down is not None and now - down < spec.scale_down_delay_s:
        longer = min(2 * delay, spec.max_delay_factor * spec.scale_down_delay_s)
        if longer > delay:
            notes.append(
                f"load back {now - down:.0f} s after a scale-down: "
                f"scale-down delay {delay:g} -> {longer:g} s"
            )
        return longer
    return max(spec.scale_down_delay_s, delay / 2)


def _in_window_before(when: float | None, spec: TuningSpec, now: float) -> bool:
    """Whether ``when`` (a tick's time) was the tick before this one, allowing for jitter."""
    return when is not None and now - when <= 1.5 * spec.interval_s


def _tapering(needs: list[int], step: float) -> bool:
    """Whether the recommendations, oldest first, fell steadily: never above where they
    started, down by at most ``step`` of the count (at least one replica) at a time, and by
    two replicas or more in all. A burst's end or a step down falls at once; noise at a
    boundary goes above where it started. Noise on the way down (10, 9, 10, 9, 8) does not
    hide the fall."""
    gentle = all(a - b <= max(1, math.floor(step * a)) for a, b in pairwise(needs))
    return gentle and max(needs) == needs[0] and needs[0] - needs[-1] >= 2


def _outside_batcher_ms(obs: Observation) -> float | None:
    """The part of the request p95 not spent queueing for a batch or running one."""
    p95, wait, batch = obs.latency_p95_s, obs.queue_wait_p95_s, obs.mean_batch_duration_s
    if p95 is None or wait is None or batch is None:
        return None
    return max(0.0, p95 - wait - batch) * 1000


def decide(
    observation: Observation | None, current: CurrentState, spec: TuningSpec, now: float
) -> Decision:
    """The next replicas, max batch size and max wait for one BatchedModel; see the module
    docstring for the rules. ``now`` is in the same clock as the state's times."""
    obs = observation
    if obs is None or obs.pods_paired == 0 or obs.window_s <= 0:
        return _hold(current, spec, "no metrics to compare yet (first scrape or no pod answered)")
    notes: list[str] = []

    # --- how much load, and is the picture complete
    coverage = obs.pods_paired / max(1, obs.pods_expected)
    rate = obs.arrival_rate / coverage
    if not obs.complete:
        notes.append(
            f"{obs.pods_expected - obs.pods_paired} of {obs.pods_expected} pods unobserved, "
            f"their load assumed like the others' (scale up only)"
        )
    debt_rate = obs.queue_depth / max(spec.interval_s, spec.debt_payback_s)
    demand = rate + debt_rate
    p95_ms = obs.latency_p95_s * 1000 if obs.latency_p95_s is not None else None
    enough = obs.latency_samples >= spec.min_latency_samples and p95_ms is not None
    util = obs.utilization
    missed = enough and p95_ms is not None and p95_ms > spec.latency_target_ms
    outside_ms = _outside_batcher_ms(obs)
    starved = (
        missed
        and outside_ms is not None
        and outside_ms > spec.outside_share * spec.latency_target_ms
    )
    if starved:
        notes.append(
            f"p95 {p95_ms:.0f} ms, {outside_ms:.0f} ms of it outside the batcher "
            "(the HTTP layer short of CPU): overload, not the batch size"
        )
    # A miss is overload when the replicas are saturated, the queue holds more than a batch
    # per pod, or the time is lost outside the batcher (a smaller batch only costs capacity
    # there); or when it is the tail of such a backlog: replicas were just added, or
    # overload was seen within a window plus the p95 (the requests answered now waited
    # through it). More replicas, not smaller batches, fix those.
    busy_pods = (util is not None and util >= spec.overload_utilization) or (
        obs.queue_depth > current.max_batch_size * max(1, obs.pods_scraped)
    )
    saturated = busy_pods or starved
    # One starved window is more often a stall (of the process, or of its neighbours on the
    # node) than a lasting shortage of CPU: it keeps the batch at once, but asks for
    # replicas only when the window before was overloaded too.
    lasting = busy_pods or (starved and _in_window_before(current.last_overload, spec, now))
    if starved and not lasting:
        notes.append("a replica only if the next window is starved too")
    last_overload = now if saturated else current.last_overload
    just_scaled = (
        current.last_scale_up is not None and now - current.last_scale_up < 3 * spec.interval_s
    )
    tail = (
        current.last_overload is not None
        and now - current.last_overload <= spec.interval_s + (p95_ms or 0.0) / 1000
    )
    overloaded = saturated or just_scaled or tail
    # A miss without overload is acted on only when the judged window before missed too:
    # the p95 of one window is the mark a single stall (a paused process, a noisy neighbour)
    # leaves, and answering it with smaller batches and more replicas costs for minutes.
    miss_alone = missed and not overloaded and obs.complete and _judged(current, spec, now)
    last_miss = now if miss_alone else current.last_miss
    confirmed = miss_alone and _in_window_before(current.last_miss, spec, now)

    # --- batching config
    size, wait, config_note = _choose_config(
        obs, current, spec, p95_ms, enough, overloaded, confirmed, now
    )
    notes.append(config_note)

    # --- replicas: capacity of one replica at the chosen batch size
    busy = _utilization_target(obs, current, spec, p95_ms, enough, confirmed, now)
    full = _batches_fill(obs, current.max_batch_size)
    rec, load_note = _recommend_replicas(
        obs, spec, size, rate, demand, busy, lasting or full, current.replicas
    )
    if rec is None:
        rec = current.replicas
    # Never stack a replica on a scale-up not yet in force: pods still starting, or added so
    # recently that the window's p95 still holds the backlog from before they were ready.
    # Nor while the queue drains: the replicas carry the load, and the debt term sizes how
    # fast the backlog goes.
    starting = obs.pods_expected < current.replicas
    draining = obs.queue_depth > 0 and obs.throughput > obs.arrival_rate
    # Nor when the pods are not saturated and the demand needs fewer replicas than run: the
    # miss is then the tail of a backlog already paid (the requests answered in this window
    # waited through it), not a want of replicas.
    spare = not busy_pods and rec < current.replicas
    if missed and lasting and not starting and not just_scaled and not draining and not spare:
        rec = max(rec, current.replicas + 1)
        load_note += "; p95 missed under overload: at least one more replica"
    rec = int(_clamp(rec, spec.min_replicas, spec.max_replicas))
    notes.append(load_note)

    # --- stabilise: up now, down only after the delay, by a bounded step
    replicas = int(_clamp(current.replicas, spec.min_replicas, spec.max_replicas))
    delay = _clamp(
        current.scale_down_delay_s or spec.scale_down_delay_s,
        spec.scale_down_delay_s,
        spec.max_delay_factor * spec.scale_down_delay_s,
    )
    keep_from = now - delay - spec.interval_s
    recs = (*((t, r) for t, r in current.recommendations if t >= keep_from), (now, rec))
    if rec > replicas:
        replicas = rec
        notes.append(f"scale up to {rec}")
        delay = _delay_after_scale_up(current, spec, now, delay, notes)
    elif rec < replicas:
        window = [r for t, r in recs if t > now - delay]
        covered = min(t for t, _ in recs) <= now - delay
        low, span = f"load low for {delay:g} s", delay
        if covered and _tapering(window, spec.taper_step):
            low, span = f"need falling steadily for {delay:g} s", spec.taper_share * delay
            window = [r for t, r in recs if t > now - span]
        recent_up = current.last_scale_up is not None and now - current.last_scale_up < delay
        gen = obs.min_config_generation
        if not obs.complete or obs.pods_expected < current.replicas:
            notes.append(f"{rec} would do, but no scale-down while pods are unobserved")
        elif gen is None or gen < current.generation:
            notes.append(f"{rec} would do, but no scale-down while a config change is pending")
        elif not covered or recent_up:
            notes.append(f"{rec} would do; waiting for {delay:g} s of low load before scaling down")
        else:
            step = max(1, math.floor(replicas * spec.scale_down_step))
            target = max(max(window), replicas - step)
            if target < replicas:
                notes.append(f"{low}: scale down to {target} (highest recent need {max(window)})")
                replicas = target
            else:
                notes.append(f"highest need in the last {span:g} s is {max(window)}")
    replicas = int(_clamp(replicas, spec.min_replicas, spec.max_replicas))
    reason = "; ".join(n for n in notes if n)
    return replace(
        _decision(current, replicas, size, wait, reason, recs),
        utilization_target=busy,
        last_overload=last_overload,
        last_miss=last_miss,
        scale_down_delay_s=delay,
        needed_replicas=rec,
    )
