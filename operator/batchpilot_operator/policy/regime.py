"""Stage 2, regime: one classification of the window.

A p95 within the target is ``within`` (``slack`` when well inside it). A miss is
``overload`` when more replicas, not smaller batches, fix it: the pods are saturated (busy
past ``overload_utilization``, or more than a batch per pod queued), the time is lost
outside the batcher (the HTTP layer short of CPU), or the window is the tail of a backlog
(replicas just added, or overload within a window plus the p95: the requests answered now
waited through it). Any other miss is a ``stall`` in its first window and a ``miss`` when
the judged window before missed too: one window's p95 is the mark a single stall (a paused
process, a noisy neighbour) leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchpilot_operator.metrics import Observation
from batchpilot_operator.policy.evidence import Evidence
from batchpilot_operator.policy.rules import Note, Regime, Rule
from batchpilot_operator.policy.spec import TuningSpec
from batchpilot_operator.policy.state import CurrentState


@dataclass(frozen=True)
class Assessment:
    """The regime of a window and the signals the plan reads."""

    regime: Regime
    note: Note | None
    """The regime's rule (None when there is no p95: the evidence says why)."""
    missed: bool
    """The p95 is over the target (with enough samples)."""
    saturated_pods: bool
    """The pods are busy past ``overload_utilization`` or hold more than a batch queued."""
    lasting: bool
    """Overload that asks for replicas: saturated pods, or starved two windows running."""
    just_scaled: bool
    """Replicas were added within ``backlog_intervals``."""
    last_overload: float | None
    last_miss: float | None
    confirmed: bool
    """A miss without overload that the judged window before had too."""


def previous_window(when: float | None, spec: TuningSpec, now: float) -> bool:
    """Whether ``when`` (a tick's time) was the tick before this one, allowing for jitter."""
    return when is not None and now - when <= spec.previous_window_intervals * spec.interval_s


def outside_batcher_ms(obs: Observation) -> float | None:
    """The part of the request p95 not spent queueing for a batch or running one."""
    p95, wait, batch = obs.latency_p95_s, obs.queue_wait_p95_s, obs.mean_batch_duration_s
    if p95 is None or wait is None or batch is None:
        return None
    return max(0.0, p95 - wait - batch) * 1000


def classify(
    obs: Observation, ev: Evidence, current: CurrentState, spec: TuningSpec, now: float
) -> Assessment:
    """The regime of the window ``obs`` with evidence ``ev``."""
    target = spec.latency_target_ms
    p95 = ev.p95_ms
    missed = p95 is not None and p95 > target
    util = obs.utilization
    saturated_pods = (util is not None and util >= spec.overload_utilization) or (
        obs.queue_depth > current.max_batch_size * max(1, obs.pods_scraped)
    )
    outside = outside_batcher_ms(obs)
    starved = missed and outside is not None and outside > spec.outside_share * target
    lasting = saturated_pods or (starved and previous_window(current.last_overload, spec, now))
    just_scaled = (
        current.last_scale_up is not None
        and now - current.last_scale_up < spec.backlog_intervals * spec.interval_s
    )
    tail = (
        current.last_overload is not None
        and now - current.last_overload <= spec.interval_s + (p95 or 0.0) / 1000
    )
    overloaded = saturated_pods or starved or just_scaled or tail
    last_overload = now if saturated_pods or starved else current.last_overload
    miss_alone = missed and not overloaded and ev.judged
    confirmed = miss_alone and previous_window(current.last_miss, spec, now)
    last_miss = now if miss_alone else current.last_miss

    values = {"p95": p95, "target": target}
    note: Note | None = None
    if p95 is None:
        regime = Regime.IDLE if ev.demand <= 0 else Regime.UNJUDGED
    elif not missed:
        slack = p95 < spec.well_inside * target
        regime = Regime.SLACK if slack else Regime.WITHIN
        note = Note.of(Rule.SLACK if slack else Rule.WITHIN, **values)
    elif saturated_pods:
        regime = Regime.OVERLOAD
        note = Note.of(Rule.SATURATED, busy_share=util or 0.0, queue=obs.queue_depth, **values)
    elif starved:
        regime = Regime.OVERLOAD
        rule = Rule.STARVED if lasting else Rule.STARVED_ONCE
        note = Note.of(rule, p95=p95, outside=outside)
    elif overloaded:
        regime, note = Regime.OVERLOAD, Note.of(Rule.BACKLOG, **values)
    elif confirmed:
        regime, note = Regime.MISS, Note.of(Rule.MISS, **values)
    else:
        regime, note = Regime.STALL, Note.of(Rule.STALL, **values)
    return Assessment(
        regime=regime,
        note=note,
        missed=missed,
        saturated_pods=saturated_pods,
        lasting=lasting,
        just_scaled=just_scaled,
        last_overload=last_overload,
        last_miss=last_miss,
        confirmed=confirmed,
    )
