"""Stage 3, plan: the batch size, wait and replicas the window asks for.

The service-time model ``t(b) = a + c*b`` (fitted from the pods' batches) bounds the batch
size: the largest ``b`` whose worst case under load, a batch in execution plus the wait plus
its own batch (``2*t(b) + wait``), fits in ``latency_budget`` of the target. The measured
p95 outranks it: the model lowers the batch size only on a measured miss, never while the
p95 is within the target (a fit inflated by a noisy neighbour would otherwise cut capacity
that the measurement says is fine). The p95 corrects the rest: a confirmed miss cuts the
batch multiplicatively, a p95 well inside with batches that fill adds to it.

Replicas carry the demand at a target utilisation (the headroom), which the p95 moves the
same way: down multiplicatively on a confirmed miss, up additively when well inside.
"""

from __future__ import annotations

import math

from batchpilot_operator.metrics import Observation, ServiceTimeFit
from batchpilot_operator.policy.evidence import Evidence
from batchpilot_operator.policy.regime import Assessment
from batchpilot_operator.policy.rules import Note, Regime, Rule
from batchpilot_operator.policy.spec import TuningSpec
from batchpilot_operator.policy.state import CurrentState

WITHIN_TARGET = (Regime.WITHIN, Regime.SLACK, Regime.IDLE)
"""The regimes whose measured p95 is within the target: the model may not cut the batch."""
ROUNDING = 1e-9
"""A replica count that is whole but for float rounding is not rounded up."""


def clamp(value: float, lo: float, hi: float) -> float:
    """``value`` within ``[lo, hi]``."""
    return max(lo, min(hi, value))


def chosen_wait_ms(spec: TuningSpec) -> float:
    """The wait: its share of the target, within bounds, in steps of ``wait_step_ms``."""
    wait_ms = clamp(spec.wait_share * spec.latency_target_ms, spec.min_wait_ms, spec.max_wait_ms)
    return round(wait_ms / spec.wait_step_ms) * spec.wait_step_ms


def model_batch_size(fit: ServiceTimeFit, spec: TuningSpec) -> int:
    """The largest batch size whose modelled worst case, ``2*t(b) + wait``, fits the budget."""
    budget = spec.latency_budget * spec.latency_target_s
    wait_s = chosen_wait_ms(spec) / 1000
    best = spec.min_batch_size
    for b in range(spec.min_batch_size, spec.max_batch_size + 1):
        if 2 * fit.duration(b) + wait_s > budget:
            break
        best = b
    return best


def batches_fill(obs: Observation, max_batch_size: int, spec: TuningSpec) -> bool:
    """Whether the executed batches reach the size limit (on average ``fill_share`` of it)."""
    mean = obs.mean_batch_size
    return mean is not None and mean >= spec.fill_share * max_batch_size


def plan_config(
    obs: Observation, ev: Evidence, a: Assessment, current: CurrentState, spec: TuningSpec
) -> tuple[int, float, Rule, list[Note]]:
    """The batch size and wait to run next, the rule that set them, and the notes."""
    size = int(clamp(current.max_batch_size, spec.min_batch_size, spec.max_batch_size))
    wait = clamp(current.max_wait_ms, spec.min_wait_ms, spec.max_wait_ms)
    if ev.config_hold is not None:
        return size, wait, ev.config_hold.rule, []
    notes: list[Note] = []
    rule = a.note.rule if a.note is not None else Rule.WITHIN
    if a.regime is Regime.MISS:
        size = math.floor(size * spec.decrease_factor)
        wait = wait / 2
        rule = Rule.BATCH_DECREASE
        notes.append(Note.of(rule, factor=spec.decrease_factor))
    elif a.regime is Regime.OVERLOAD:
        rule = Rule.BATCH_KEPT
        notes.append(Note(rule))
    elif a.regime is Regime.SLACK and batches_fill(obs, size, spec):
        size += spec.increase_step
        rule = Rule.BATCH_INCREASE
        notes.append(Note.of(rule, step=spec.increase_step))
    fit = obs.service_fit
    if fit is not None and a.regime is not Regime.OVERLOAD:
        model = model_batch_size(fit, spec)
        values = {"a": fit.intercept_s * 1e3, "c": fit.per_item_s * 1e3, "size": model}
        kept = int(clamp(current.max_batch_size, spec.min_batch_size, spec.max_batch_size))
        # The measurement outranks the model: while the p95 is within target, a fit that
        # says the batch is too large (inflated by a noisy neighbour, or measured on batches
        # that never filled) may stop it growing but not cut it.
        if model < min(size, kept) and a.regime in WITHIN_TARGET:
            size = kept  # the measurement outranks the model: no increase, and no cut
            rule = Rule.MODEL_OVERRULED
            notes.append(Note.of(rule, **values))
        elif model < size:
            size = model
            rule = Rule.MODEL_CAP
            notes.append(Note.of(rule, **values))
    # The wait needs no model. It follows its rule only on a clear difference (no churn),
    # and not on a miss, where the correction above has the say.
    chosen = chosen_wait_ms(spec)
    clear = max(spec.wait_change_ms, spec.wait_change_share * wait)
    if not a.missed and abs(chosen - wait) > clear:
        wait = chosen
        notes.append(Note.of(Rule.WAIT_SET, wait=wait))
        if rule in (Rule.WITHIN, Rule.SLACK):
            rule = Rule.WAIT_SET
    size = int(clamp(size, spec.min_batch_size, spec.max_batch_size))
    return size, clamp(wait, spec.min_wait_ms, spec.max_wait_ms), rule, notes


def utilization_target(
    ev: Evidence, a: Assessment, current: CurrentState, spec: TuningSpec
) -> float:
    """The headroom, corrected from the measured p95: a confirmed miss without overload
    lowers it multiplicatively, a p95 well inside raises it additively. A miss under
    overload leaves it: the replicas were short of the demand, which the demand already
    counts, and less headroom then would keep the extra replicas long after the backlog."""
    target = current.utilization_target or spec.target_utilization
    if ev.judged and ev.p95_ms is not None:
        if a.missed:
            if a.confirmed:
                target *= spec.decrease_factor
        elif ev.p95_ms < spec.well_inside * spec.latency_target_ms:
            target += spec.utilization_step
    return clamp(target, spec.min_utilization, spec.max_utilization)


def replica_capacity(
    obs: Observation, spec: TuningSpec, size: int
) -> tuple[float, dict[str, float]] | None:
    """Items per second one replica carries at batch size ``size``, from the fit (at the
    size reached under load, capped by the budget) or else from the busy share."""
    fit = obs.service_fit
    if fit is not None:
        budget = spec.latency_budget * spec.latency_target_s
        b = size
        while b > 1 and 2 * fit.duration(b) > budget:
            b -= 1
        return fit.throughput(b), {"b": b, "tb": fit.duration(b) * 1e3}
    util = obs.utilization
    if util is not None and util > spec.least_busy_share and obs.throughput > 0:
        return (obs.throughput / obs.pods_paired) / util, {"util": util}
    return None


def plan_replicas(
    obs: Observation,
    ev: Evidence,
    a: Assessment,
    current: CurrentState,
    spec: TuningSpec,
    size: int,
    utilization: float,
) -> tuple[int, Rule, list[Note]]:
    """The replicas the demand needs at ``utilization`` (within the bounds), the rule that
    set them, and the notes.

    Without a fit, the busy share gives a lower bound of a replica's capacity while batches
    do not fill (more load fills them): it may lower the replicas, but raises them only
    when the pods are saturated or their batches full."""
    if ev.demand <= 0:
        # an idle model runs no batches: neither a fit nor a busy share may exist
        return spec.min_replicas, Rule.NO_DEMAND, [Note(Rule.NO_DEMAND)]
    need, note = _size(obs, ev, a, current, spec, size, utilization)
    notes = [note]
    # One more replica under lasting overload, unless a scale-up is not yet in force (pods
    # starting, or added so recently that the backlog from before is still in the p95),
    # the queue drains already, or the demand needs fewer than run (a backlog already paid).
    starting = obs.pods_expected < current.replicas
    draining = obs.queue_depth > 0 and obs.throughput > obs.arrival_rate
    spare = not a.saturated_pods and need < current.replicas
    if a.missed and a.lasting and not (starting or a.just_scaled or draining or spare):
        need = max(need, current.replicas + 1)
        notes.append(Note(Rule.OVERLOAD_STEP))
    return int(clamp(need, spec.min_replicas, spec.max_replicas)), notes[-1].rule, notes


def _size(
    obs: Observation,
    ev: Evidence,
    a: Assessment,
    current: CurrentState,
    spec: TuningSpec,
    size: int,
    utilization: float,
) -> tuple[int, Note]:
    """Replicas for the demand from a replica's capacity (or the current count, unsized)."""
    sized = replica_capacity(obs, spec, size)
    if sized is None:
        return current.replicas, Note(Rule.UNSIZED)
    capacity, how = sized
    need = max(1, math.ceil(ev.demand / (capacity * utilization) - ROUNDING))
    values = {
        "demand": ev.demand,
        "rate": ev.rate,
        "queue": obs.queue_depth,
        "capacity": capacity,
        "need": need,
        "utilization_target": utilization,
        **how,
    }
    if obs.service_fit is not None:
        return need, Note.of(Rule.SIZED_BY_MODEL, **values)
    exact = a.lasting or batches_fill(obs, current.max_batch_size, spec)
    if need > current.replicas and not exact:
        note = Note.of(
            Rule.LOWER_BOUND,
            batch=obs.mean_batch_size or 0.0,
            replicas=current.replicas,
            **values,
        )
        return current.replicas, note
    return need, Note.of(Rule.SIZED_BY_BUSY_SHARE, **values)
