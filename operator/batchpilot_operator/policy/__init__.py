"""The tuning policy: from one window's observation, the next replicas, max batch size and
max wait. Pure: no I/O.

``decide(observation, current, spec, now) -> Decision`` runs four stages, each a small pure
function in its own module:

1. :mod:`~batchpilot_operator.policy.evidence`: how much load, and can this window judge
   the config (if not, the one reason to hold it);
2. :mod:`~batchpilot_operator.policy.regime`: one classification of the window (idle,
   within, slack, stall, miss, overload);
3. :mod:`~batchpilot_operator.policy.plan`: the service-time model chooses batch size and
   replicas, the measured p95 corrects them (and outranks the model while within target);
   :mod:`~batchpilot_operator.policy.room` keeps replicas that cannot add capacity out;
4. :mod:`~batchpilot_operator.policy.stabilise`: up at once, down after a delay and by a
   bounded step.

Every constant is a field of :class:`TuningSpec`. A :class:`Decision` names the regime and
the rules that set the config and the replicas (:class:`Rule`); its reason text is built
from them. The caller keeps :class:`CurrentState` between ticks
(:meth:`Decision.next_state`).
"""

from __future__ import annotations

from batchpilot_operator.metrics import Observation
from batchpilot_operator.policy.evidence import gather
from batchpilot_operator.policy.plan import clamp, plan_config, plan_replicas, utilization_target
from batchpilot_operator.policy.regime import classify
from batchpilot_operator.policy.room import room, startup_slowdown
from batchpilot_operator.policy.rules import Note, Regime, Rule, Stage
from batchpilot_operator.policy.spec import TuningSpec
from batchpilot_operator.policy.stabilise import stabilise
from batchpilot_operator.policy.state import CurrentState, Decision

__all__ = ["CurrentState", "Decision", "Regime", "Rule", "Stage", "TuningSpec", "decide"]


def decide(
    observation: Observation | None, current: CurrentState, spec: TuningSpec, now: float
) -> Decision:
    """The next replicas, max batch size and max wait for one BatchedModel. ``now`` is in
    the same clock as the state's times."""
    ev = gather(observation, current, spec, now)
    if observation is None or ev is None:
        return _hold(current, spec)
    a = classify(observation, ev, current, spec, now)
    size, wait, config_rule, config_notes = plan_config(observation, ev, a, current, spec)
    headroom = utilization_target(ev, a, current, spec)
    need, replica_rule, replica_notes = plan_replicas(
        observation, ev, a, current, spec, size, headroom
    )
    fits = room(observation, current, spec, need, now)
    if fits.note is not None:
        need, replica_rule = fits.need, fits.note.rule
        replica_notes.append(fits.note)
    st = stabilise(ev, current, spec, need, now, cancel_start=fits.cancels_start)
    notes = [*ev.notes, *([a.note] if a.note else []), *config_notes, *replica_notes, *st.notes]
    slowdown = current.slowdown_at_scale_up
    if st.rule is Rule.SCALE_UP:
        slowdown = startup_slowdown(observation)
    return _decision(
        current,
        st.replicas,
        size,
        wait,
        regime=a.regime,
        config_rule=config_rule,
        replica_rule=st.rule or replica_rule,
        notes=notes,
        recommendations=st.recommendations,
        utilization_target=headroom,
        last_overload=a.last_overload,
        last_miss=a.last_miss,
        scale_down_delay_s=st.scale_down_delay_s,
        last_no_room=fits.last_no_room,
        no_room_replicas=fits.no_room_replicas,
        slowdown_at_scale_up=slowdown,
        needed_replicas=need,
    )


def _hold(current: CurrentState, spec: TuningSpec) -> Decision:
    """Hold everything (no window to go by), brought inside the spec's bounds."""
    replicas = int(clamp(current.replicas, spec.min_replicas, spec.max_replicas))
    size = int(clamp(current.max_batch_size, spec.min_batch_size, spec.max_batch_size))
    wait = clamp(current.max_wait_ms, spec.min_wait_ms, spec.max_wait_ms)
    notes = [Note(Rule.NO_METRICS)]
    moved = []
    if replicas != current.replicas:
        moved.append(f"replicas {current.replicas}->{replicas}")
    if size != current.max_batch_size or wait != current.max_wait_ms:
        moved.append("batching config")
    rule = Rule.NO_METRICS
    if moved:
        rule = Rule.BOUNDS
        notes.append(Note.of(rule, what=" and ".join(moved)))
    return _decision(
        current,
        replicas,
        size,
        wait,
        regime=Regime.UNJUDGED,
        config_rule=rule,
        replica_rule=rule,
        notes=notes,
        recommendations=current.recommendations,
        utilization_target=current.utilization_target,
        last_overload=current.last_overload,
        last_miss=current.last_miss,
        scale_down_delay_s=current.scale_down_delay_s,
        last_no_room=current.last_no_room,
        no_room_replicas=current.no_room_replicas,
        slowdown_at_scale_up=current.slowdown_at_scale_up,
        needed_replicas=None,
    )


def _decision(
    current: CurrentState,
    replicas: int,
    size: int,
    wait_ms: float,
    *,
    regime: Regime,
    config_rule: Rule,
    replica_rule: Rule,
    notes: list[Note],
    recommendations: tuple[tuple[float, int], ...],
    utilization_target: float | None,
    last_overload: float | None,
    last_miss: float | None,
    scale_down_delay_s: float | None,
    last_no_room: float | None,
    no_room_replicas: int | None,
    slowdown_at_scale_up: float | None,
    needed_replicas: int | None,
) -> Decision:
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
        regime=regime,
        config_rule=config_rule,
        replica_rule=replica_rule,
        notes=tuple(notes),
        replicas_changed=replicas != current.replicas,
        config_changed=config_changed,
        recommendations=recommendations,
        utilization_target=utilization_target,
        last_overload=last_overload,
        last_miss=last_miss,
        scale_down_delay_s=scale_down_delay_s,
        last_no_room=last_no_room,
        no_room_replicas=no_room_replicas,
        slowdown_at_scale_up=slowdown_at_scale_up,
        needed_replicas=needed_replicas,
    )
