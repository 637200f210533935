"""Part of the plan stage: whether a new replica can add capacity at all.

Replicas add capacity only when each brings its own compute. Where pods share it (one node's
CPU, a time-sliced accelerator), a pod's start-up (its model load) takes compute from the
serving pods, and once up it splits what they had: more replicas then cost without serving
more. The metrics show the first: while a pod starts, the serving pods' batches run much
slower than the service-time fit says than they did when the scale-up was decided. That
cancels the start and holds the replicas at the count that served for ``no_room_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchpilot_operator.metrics import Observation
from batchpilot_operator.policy.rules import Note, Rule
from batchpilot_operator.policy.spec import TuningSpec
from batchpilot_operator.policy.state import CurrentState


@dataclass(frozen=True)
class Room:
    """The replicas the compute has room for, and the memory of why."""

    need: int
    note: Note | None
    last_no_room: float | None
    no_room_replicas: int | None

    @property
    def cancels_start(self) -> bool:
        """Whether pods starting now are to be removed at once."""
        return self.note is not None and self.note.rule is Rule.STARTUP_STARVES


def startup_slowdown(obs: Observation) -> float | None:
    """How many times slower than the fit the serving pods' batches ran in this window."""
    fit, size, measured = obs.service_fit, obs.mean_batch_size, obs.mean_batch_duration_s
    if fit is None or size is None or measured is None or fit.duration(size) <= 0:
        return None
    return measured / fit.duration(size)


def room(obs: Observation, current: CurrentState, spec: TuningSpec, need: int, now: float) -> Room:
    """``need`` limited to what the compute has room for."""
    starting = current.replicas - obs.pods_expected
    slowdown = startup_slowdown(obs)
    before = current.slowdown_at_scale_up
    if (
        starting > 0
        and slowdown is not None
        and before is not None
        and slowdown >= spec.startup_starve_factor * max(1.0, before)
    ):
        fit, size = obs.service_fit, obs.mean_batch_size or 0.0
        assert fit is not None
        serving = max(spec.min_replicas, obs.pods_expected)
        note = Note.of(
            Rule.STARTUP_STARVES,
            starting=starting,
            slowdown=slowdown / max(1.0, before),
            b=size,
            measured=(obs.mean_batch_duration_s or 0.0) * 1e3,
            fitted=fit.duration(size) * 1e3,
            replicas=serving,
        )
        return Room(min(need, serving), note, now, serving)
    held = current.last_no_room is not None and now - current.last_no_room < spec.no_room_s
    cap = current.no_room_replicas
    if held and cap is not None and need > cap:
        ago = now - (current.last_no_room or now)
        note = Note.of(Rule.NO_ROOM, ago=ago, replicas=cap, hold=spec.no_room_s)
        return Room(cap, note, current.last_no_room, cap)
    return Room(need, None, current.last_no_room, cap if held else None)
