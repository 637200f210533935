"""The tuning loop's state between ticks, and its form in ``status.loop``.

One object, :class:`LoopState`: the knobs the loop set (with the spec values they started
from) and the policy's memory (timings, recent recommendations, the headroom and scale-down
delay it learnt). The policy reads it as a :class:`~batchpilot_operator.policy.CurrentState`
and returns a :class:`~batchpilot_operator.policy.Decision`; :meth:`LoopState.after` folds
the decision back in. The loop persists it in ``status.loop`` with every tick's status write,
so a new operator process resumes from it.

The policy's times are the loop's monotonic clock; status holds wall-clock timestamps. The
conversion uses the two clocks read at the same moment (:class:`Clocks`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from batchpilot_operator import api
from batchpilot_operator.api import LoopStatus, SpecBasis, TunedState
from batchpilot_operator.ownership import loop_knobs
from batchpilot_operator.policy import CurrentState, Decision

TIMINGS = (
    "last_scale_up",
    "last_scale_down",
    "last_config_change",
    "last_overload",
    "last_miss",
    "last_no_room",
)
"""The policy's timings (:class:`CurrentState` attributes), each a ``status.loop`` field."""


@dataclass(frozen=True)
class Clocks:
    """The loop's monotonic time and the wall-clock time at one moment."""

    monotonic: float
    wall: float

    def to_wall(self, t: float) -> str:
        """A monotonic time as an RFC 3339 timestamp (milliseconds)."""
        seconds, ms = divmod(round((self.wall - (self.monotonic - t)) * 1000), 1000)
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}Z"

    def to_monotonic(self, stamp: str) -> float:
        """An RFC 3339 timestamp as a monotonic time."""
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        return self.monotonic - (self.wall - when)


@dataclass(frozen=True)
class LoopState:
    """What the loop set and what its policy remembers (see the module docstring)."""

    knobs: TunedState
    """The replicas, batch size and wait the loop set, and ``basis``: the spec values they
    started from. Its config generation is not the loop's (the reconciler settles it)."""
    memory: CurrentState
    """The policy's memory; its knobs are those of the last decision."""

    @classmethod
    def fresh(cls, running: TunedState) -> LoopState:
        """No memory: the loop starts from the knobs now rendered."""
        memory = CurrentState(
            running.replicas,
            running.max_batch_size,
            running.max_wait_ms,
            generation=running.config_generation,
        )
        return cls(running, memory)

    def current(self, running: TunedState) -> CurrentState:
        """The policy's input: the knobs now rendered (their generation included) with this
        memory. Call only when ``running`` carries this state's knobs (:meth:`set_here`)."""
        return replace(
            self.memory,
            replicas=running.replicas,
            max_batch_size=running.max_batch_size,
            max_wait_ms=running.max_wait_ms,
            generation=running.config_generation,
        )

    def set_here(self, running: TunedState) -> bool:
        """Whether ``running`` has the knobs this state set; if not, they were set outside
        the loop (a spec edit, ``kubectl scale``, new bounds) and the memory no longer fits."""
        return _knobs(running) == _knobs(self.knobs)

    def after(
        self, decision: Decision, current: CurrentState, running: TunedState, now: float
    ) -> LoopState:
        """The state once ``decision`` (made from ``current``, for ``running``) is written:
        its knobs start from the spec values ``running`` was resolved from."""
        memory = decision.next_state(current, now)
        knobs = replace(
            running,
            replicas=decision.replicas,
            max_batch_size=decision.max_batch_size,
            max_wait_ms=decision.max_wait_ms,
        )
        return LoopState(knobs, memory)

    def to_status(self, clocks: Clocks) -> dict[str, Any]:
        """``status.loop``, in the API's field names, every field named: None (null in the
        merge patch) removes what an earlier state had there."""
        m = self.memory
        util, delay = m.utilization_target, m.scale_down_delay_s
        basis = self.knobs.basis
        status = LoopStatus(
            replicas=self.knobs.replicas,
            max_batch_size=self.knobs.max_batch_size,
            max_wait_ms=self.knobs.max_wait_ms,
            from_spec=None
            if basis is None
            else SpecBasis(replicas=basis[0], max_batch_size=basis[1], max_wait_ms=basis[2]),
            utilization_target=None if util is None else round(util, 4),
            scale_down_delay_seconds=None if delay is None else round(delay, 1),
            no_room_replicas=m.no_room_replicas,
            slowdown_at_scale_up=None
            if m.slowdown_at_scale_up is None
            else round(m.slowdown_at_scale_up, 3),
            **{
                name: None if (t := getattr(m, name)) is None else clocks.to_wall(t)
                for name in TIMINGS
            },
            recommendations=[
                api.Recommendation(time=clocks.to_wall(t), replicas=r)
                for t, r in compress(m.recommendations)
            ]
            or None,
        )
        return status.model_dump(by_alias=True)

    @classmethod
    def from_status(cls, loop: LoopStatus, running: TunedState, clocks: Clocks) -> LoopState:
        """The state an earlier loop wrote, for ``running`` (the knobs now rendered)."""
        asked = loop_knobs(loop)
        knobs = running
        if asked is not None:
            knobs = replace(
                running,
                replicas=asked.replicas,
                max_batch_size=asked.max_batch_size,
                max_wait_ms=asked.max_wait_ms,
            )

        def mono(stamp: str | None) -> float | None:
            return None if stamp is None else clocks.to_monotonic(stamp)

        recs = tuple((clocks.to_monotonic(r.time), r.replicas) for r in loop.recommendations or [])
        memory = replace(
            cls.fresh(knobs).memory,
            utilization_target=loop.utilization_target,
            scale_down_delay_s=loop.scale_down_delay_seconds,
            recommendations=recs,
            last_scale_up=mono(loop.last_scale_up),
            last_scale_down=mono(loop.last_scale_down),
            last_config_change=mono(loop.last_config_change),
            last_overload=mono(loop.last_overload),
            last_miss=mono(loop.last_miss),
            last_no_room=mono(loop.last_no_room),
            no_room_replicas=loop.no_room_replicas,
            slowdown_at_scale_up=loop.slowdown_at_scale_up,
        )
        return cls(knobs, memory)


def compress(
    recs: tuple[tuple[float, int], ...], limit: int = api.MAX_RECOMMENDATIONS
) -> list[tuple[float, int]]:
    """``recs`` with each run of equal replicas kept as its first and last entry, the newest
    ``limit`` of those: the highest need within a window, the steps between needs and, unless
    cut by the limit, the oldest time covered stay as they were (a cut only delays a
    scale-down until the window is covered again)."""
    out: list[tuple[float, int]] = []
    for i, (t, r) in enumerate(recs):
        inner = 0 < i < len(recs) - 1 and recs[i - 1][1] == r == recs[i + 1][1]
        if not inner:
            out.append((t, r))
    return out[-limit:]


def _knobs(state: TunedState) -> tuple[int, int, float]:
    return (state.replicas, state.max_batch_size, state.max_wait_ms)
