"""Stage 1, evidence: how much load a window saw, and whether it may judge the config.

A window that covers no pod holds everything. Otherwise the load is read (a pod that did
not answer is assumed to carry the mean load of the others, so partial data can only add
replicas), and the config is held, for one named reason, unless the window ran the config
in force from its start on every pod with enough latency samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchpilot_operator.metrics import Observation
from batchpilot_operator.policy.rules import Note, Rule
from batchpilot_operator.policy.spec import TuningSpec
from batchpilot_operator.policy.state import CurrentState


@dataclass(frozen=True)
class Evidence:
    """What one window says, and how far it may be trusted."""

    rate: float
    """Arrivals per second, scaled up for the pods that did not answer."""
    demand: float
    """The arrival rate plus the queue as debt to pay back within ``debt_payback_s``."""
    p95_ms: float | None
    """The request p95 (None: fewer samples than ``min_latency_samples``)."""
    judged: bool
    """The p95 judges the config in force: every pod answered, the window ran that config
    from its start, and there are enough samples."""
    config_hold: Note | None
    """The one reason the config may not change in this window (None: it may)."""
    down_block: str | None
    """Why replicas may not be removed in this window (None: they may)."""
    notes: tuple[Note, ...]


def window_judges(current: CurrentState, spec: TuningSpec, now: float) -> bool:
    """Whether this window ran the current config from its start: a window that began
    before the last config change mixes the old config's latencies into its p95."""
    changed = current.last_config_change
    return changed is None or now - changed >= spec.judged_after_intervals * spec.interval_s


def gather(
    obs: Observation | None, current: CurrentState, spec: TuningSpec, now: float
) -> Evidence | None:
    """The evidence of ``obs``; None when it covers no pod (hold everything)."""
    if obs is None or obs.pods_paired == 0 or obs.window_s <= 0:
        return None
    notes: list[Note] = []
    coverage = obs.pods_paired / max(1, obs.pods_expected)
    rate = obs.arrival_rate / coverage
    if not obs.complete:
        notes.append(
            Note.of(
                Rule.PODS_UNOBSERVED,
                missing=obs.pods_expected - obs.pods_paired,
                expected=obs.pods_expected,
            )
        )
    demand = rate + obs.queue_depth / max(spec.interval_s, spec.debt_payback_s)
    enough = obs.latency_samples >= spec.min_latency_samples and obs.latency_p95_s is not None
    p95_ms = obs.latency_p95_s * 1000 if enough and obs.latency_p95_s is not None else None
    whole = window_judges(current, spec, now)
    gen = obs.min_config_generation
    hold: Note | None = None
    if gen is None or gen < current.generation:
        reported = "none" if gen is None else str(gen)
        hold = Note.of(Rule.CONFIG_PENDING, generation=current.generation, reported=reported)
    elif not obs.complete:
        hold = notes[0]
    elif not whole:
        hold = Note.of(Rule.WINDOW_MIXED, generation=current.generation)
    elif p95_ms is None:
        hold = Note.of(
            Rule.FEW_SAMPLES, samples=obs.latency_samples, least=spec.min_latency_samples
        )
    if hold is not None and hold.rule is not Rule.PODS_UNOBSERVED:
        notes.append(hold)
    down_block = None
    if not obs.complete or obs.pods_expected < current.replicas:
        down_block = "pods are unobserved"
    elif gen is None or gen < current.generation:
        down_block = "a config change is pending"
    return Evidence(
        rate=rate,
        demand=demand,
        p95_ms=p95_ms,
        judged=obs.complete and whole and p95_ms is not None,
        config_hold=hold,
        down_block=down_block,
        notes=tuple(notes),
    )
