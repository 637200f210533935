"""What the policy keeps between ticks (:class:`CurrentState`) and what it decides
(:class:`Decision`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from batchpilot_operator.policy.rules import Note, Regime, Rule, reason


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
    last_no_room: float | None = None
    """When a pod's start-up last slowed the serving pods (they share their compute, so a
    new replica cannot add capacity)."""
    no_room_replicas: int | None = None
    """The replicas that served when that was seen: the most the loop runs for a while."""
    slowdown_at_scale_up: float | None = None
    """How much slower than the fit the serving pods ran in the window that scaled up: a
    start-up that slows them is measured against it, not against a slowdown already there."""


@dataclass(frozen=True)
class Decision:
    """What to run next, why (the rules that fired, by stage), and the memory to keep."""

    action: str
    """``hold``, or the changes joined by ``+``: ``scale-up``, ``scale-down``, ``retune``."""
    replicas: int
    max_batch_size: int
    max_wait_ms: float
    regime: Regime
    config_rule: Rule
    """The rule that set the batching config (a hold names the evidence that held it)."""
    replica_rule: Rule
    """The rule that set the replicas."""
    notes: tuple[Note, ...]
    """Every rule that fired, in stage order, with its values: the reason text."""
    replicas_changed: bool
    config_changed: bool
    recommendations: tuple[tuple[float, int], ...]
    utilization_target: float | None = None
    last_overload: float | None = None
    last_miss: float | None = None
    scale_down_delay_s: float | None = None
    last_no_room: float | None = None
    no_room_replicas: int | None = None
    slowdown_at_scale_up: float | None = None
    needed_replicas: int | None = None
    """The replicas the observed load needs now, within the bounds (None: not sized, as when
    metrics are missing). ``replicas`` stays above it while a scale-down waits its delay."""

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule that fired, in stage order."""
        return tuple(n.rule for n in self.notes)

    @property
    def reason(self) -> str:
        return reason(list(self.notes))

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
            last_no_room=self.last_no_room,
            no_room_replicas=self.no_room_replicas,
            slowdown_at_scale_up=self.slowdown_at_scale_up,
        )
