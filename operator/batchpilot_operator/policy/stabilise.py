"""Stage 4, stabilise: replicas up at once, down only after a delay and by a bounded step.

As the Kubernetes HPA's scale-down stabilisation: a scale-down goes only to the highest
recommendation of the last ``scale_down_delay_s`` (which observations must cover), by at
most ``scale_down_step`` of the count. Two refinements:

* a flap (a scale-up within the spec's delay after a scale-down: bursts with gaps about
  the delay's length) doubles the delay for the next scale-down, up to
  ``max_delay_factor`` times; a later scale-up halves it back;
* a taper (the recommendations fell steadily through the whole delay: a load tapering
  off, not a burst that ended) is followed after ``taper_share`` of the delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from batchpilot_operator.policy.evidence import Evidence
from batchpilot_operator.policy.plan import clamp
from batchpilot_operator.policy.rules import Note, Rule
from batchpilot_operator.policy.spec import TuningSpec
from batchpilot_operator.policy.state import CurrentState


@dataclass(frozen=True)
class Stabilised:
    """The replicas to run, the memory the next ticks need, and why."""

    replicas: int
    rule: Rule | None
    """The rule that moved or held the replicas (None: the need equals the count)."""
    notes: tuple[Note, ...]
    recommendations: tuple[tuple[float, int], ...]
    scale_down_delay_s: float


def tapering(needs: list[int], step: float) -> bool:
    """Whether the recommendations, oldest first, fell steadily: never above where they
    started, down by at most ``step`` of the count (at least one replica) at a time, and by
    two replicas or more in all. A burst's end or a step down falls at once; noise at a
    boundary goes above where it started. Noise on the way down (10, 9, 10, 9, 8) does not
    hide the fall."""
    gentle = all(a - b <= max(1, math.floor(step * a)) for a, b in pairwise(needs))
    return gentle and max(needs) == needs[0] and needs[0] - needs[-1] >= 2


def _delay_after_scale_up(
    current: CurrentState, spec: TuningSpec, now: float, delay: float, notes: list[Note]
) -> float:
    """The scale-down delay once this scale-up is applied: doubled by a flap, else halved
    back towards the spec's."""
    down = current.last_scale_down
    if down is not None and now - down < spec.scale_down_delay_s:
        longer = min(2 * delay, spec.max_delay_factor * spec.scale_down_delay_s)
        if longer > delay:
            notes.append(Note.of(Rule.FLAP, ago=now - down, before=delay, after=longer))
        return longer
    return max(spec.scale_down_delay_s, delay / 2)


def stabilise(
    ev: Evidence,
    current: CurrentState,
    spec: TuningSpec,
    need: int,
    now: float,
    cancel_start: bool = False,
) -> Stabilised:
    """The replicas to run now, given the ``need`` the plan recommends. ``cancel_start``
    removes the pods still starting at once (the plan found they cannot add capacity)."""
    replicas = int(clamp(current.replicas, spec.min_replicas, spec.max_replicas))
    delay = clamp(
        current.scale_down_delay_s or spec.scale_down_delay_s,
        spec.scale_down_delay_s,
        spec.max_delay_factor * spec.scale_down_delay_s,
    )
    keep_from = now - delay - spec.interval_s
    recs = (*((t, r) for t, r in current.recommendations if t >= keep_from), (now, need))
    notes: list[Note] = []
    rule: Rule | None = None
    if cancel_start and need < replicas:
        replicas, rule = need, Rule.CANCEL_START
        notes.append(Note.of(rule, replicas=need))
    elif need > replicas:
        replicas, rule = need, Rule.SCALE_UP
        notes.append(Note.of(rule, replicas=need))
        delay = _delay_after_scale_up(current, spec, now, delay, notes)
    elif need < replicas:
        window = [r for t, r in recs if t > now - delay]
        covered = min(t for t, _ in recs) <= now - delay
        rule, span = Rule.SCALE_DOWN, delay
        if covered and tapering(window, spec.taper_step):
            rule, span = Rule.TAPER, spec.taper_share * delay
            window = [r for t, r in recs if t > now - span]
        recent_up = current.last_scale_up is not None and now - current.last_scale_up < delay
        if ev.down_block is not None:
            rule = Rule.DOWN_BLOCKED
            notes.append(Note.of(rule, need=need, why=ev.down_block))
        elif not covered or recent_up:
            rule = Rule.DOWN_WAITING
            notes.append(Note.of(rule, need=need, delay=delay))
        else:
            step = max(1, math.floor(replicas * spec.scale_down_step))
            target = max(max(window), replicas - step)
            if target < replicas:
                replicas = target
                notes.append(
                    Note.of(rule, delay=delay, replicas=target, highest=max(window), span=span)
                )
            else:
                rule = Rule.DOWN_HELD
                notes.append(Note.of(rule, span=span, highest=max(window)))
    return Stabilised(
        replicas=int(clamp(replicas, spec.min_replicas, spec.max_replicas)),
        rule=rule,
        notes=tuple(notes),
        recommendations=recs,
        scale_down_delay_s=delay,
    )
