"""The rules of the policy, named: what a :class:`~batchpilot_operator.policy.Decision`
records, what tests assert on, and what the reason text is built from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Stage(StrEnum):
    """The stages of :func:`~batchpilot_operator.policy.decide`, in the order they run."""

    EVIDENCE = "evidence"
    """How much load the window saw, and whether it may judge the config (if not, the one
    reason to hold it)."""
    REGIME = "regime"
    """One classification of the window from its p95 and load."""
    PLAN = "plan"
    """The service-time model chooses batch size, wait and replicas; the measured p95
    corrects them, and outranks the model while within target."""
    STABILISE = "stabilise"
    """Replicas up at once, down only after a delay and by a bounded step."""


class Regime(StrEnum):
    """One classification of a window, from its measured p95 and load."""

    UNJUDGED = "unjudged"
    """No p95 to judge the config by (see the evidence rule that held it)."""
    IDLE = "idle"
    """Nothing arrived and nothing waits."""
    WITHIN = "within"
    """The p95 is within the target."""
    SLACK = "slack"
    """The p95 is well inside the target."""
    STALL = "stall"
    """The p95 missed in one window without overload: as often a paused process or a noisy
    neighbour as a config problem, so it is acted on only if the next window misses too."""
    MISS = "miss"
    """The p95 missed without overload, two windows in a row: the config is too slow."""
    OVERLOAD = "overload"
    """The p95 missed while the pods are saturated, starved of CPU outside the batcher, or
    still paying back a backlog: more replicas, not smaller batches."""


class Rule(StrEnum):
    """Every rule that can shape a decision. The value is the rule's name in status."""

    stage: Stage
    text: str

    def __new__(cls, value: str, stage: Stage, text: str) -> Rule:
        rule = str.__new__(cls, value)
        rule._value_ = value
        rule.stage = stage
        rule.text = text
        return rule

    # evidence: can this window be trusted, and if not, the one reason to hold
    NO_METRICS = (
        "no-metrics",
        Stage.EVIDENCE,
        "no metrics to compare yet (first scrape or no pod answered)",
    )
    PODS_UNOBSERVED = (
        "pods-unobserved",
        Stage.EVIDENCE,
        "{missing} of {expected} pods unobserved, their load assumed like the others'"
        " (scale up only, config held)",
    )
    CONFIG_PENDING = (
        "config-pending",
        Stage.EVIDENCE,
        "config generation {generation} not yet in force (pods report {reported}): config held",
    )
    WINDOW_MIXED = (
        "window-mixed",
        Stage.EVIDENCE,
        "config generation {generation} not yet in force for a whole window: its p95 is not"
        " judged yet, config held",
    )
    FEW_SAMPLES = (
        "few-samples",
        Stage.EVIDENCE,
        "only {samples:.0f} latency samples (< {least}): config held",
    )
    BOUNDS = ("bounds", Stage.EVIDENCE, "brought {what} inside the spec's bounds")

    # regime: one classification of the window
    WITHIN = ("within", Stage.REGIME, "p95 {p95:.0f} ms within target {target:g} ms")
    SLACK = ("slack", Stage.REGIME, "p95 {p95:.0f} ms well inside {target:g} ms")
    STALL = (
        "stall",
        Stage.REGIME,
        "p95 {p95:.0f} ms > target {target:g} ms without overload, in one window: config held"
        " unless the next window misses too",
    )
    MISS = (
        "miss",
        Stage.REGIME,
        "p95 {p95:.0f} ms > target {target:g} ms without overload, two windows in a row",
    )
    SATURATED = (
        "saturated",
        Stage.REGIME,
        "p95 {p95:.0f} ms > target {target:g} ms with the pods saturated (busy {busy_share:.0%},"
        " queue {queue:.0f}): overload",
    )
    STARVED = (
        "starved",
        Stage.REGIME,
        "p95 {p95:.0f} ms, {outside:.0f} ms of it outside the batcher (the HTTP layer short of"
        " CPU): overload, not the batch size",
    )
    STARVED_ONCE = (
        "starved-once",
        Stage.REGIME,
        "p95 {p95:.0f} ms, {outside:.0f} ms of it outside the batcher (the HTTP layer short of"
        " CPU): overload, not the batch size; a replica only if the next window is starved too",
    )
    BACKLOG = (
        "backlog",
        Stage.REGIME,
        "p95 {p95:.0f} ms > target {target:g} ms in the tail of a backlog (recent overload or"
        " scale-up): overload",
    )

    # plan: batch size, wait and replicas from the service-time model and the feedback
    BATCH_DECREASE = ("batch-decrease", Stage.PLAN, "batch x{factor:g}, wait halved")
    BATCH_INCREASE = ("batch-increase", Stage.PLAN, "batches fill: batch +{step}")
    BATCH_KEPT = ("batch-kept", Stage.PLAN, "batch kept")
    MODEL_CAP = (
        "model-cap",
        Stage.PLAN,
        "service time t(b) = {a:.1f} + {c:.2f}*b ms caps batch at {size}",
    )
    MODEL_OVERRULED = (
        "model-overruled",
        Stage.PLAN,
        "t(b) = {a:.1f} + {c:.2f}*b ms would cap batch at {size}, but the measured p95 is"
        " within target: batch kept",
    )
    WAIT_SET = ("wait-set", Stage.PLAN, "wait {wait:g} ms")
    NO_DEMAND = ("no-demand", Stage.PLAN, "no demand (no arrivals, no queue): 1 would do")
    SIZED_BY_MODEL = (
        "sized-by-model",
        Stage.PLAN,
        "demand {demand:.1f}/s (arrivals {rate:.1f}/s + queue {queue:.0f}), {capacity:.0f}/s"
        " per replica at t({b}) = {tb:.1f} ms, {need} at a {utilization_target:.0%}"
        " utilisation target",
    )
    SIZED_BY_BUSY_SHARE = (
        "sized-by-busy-share",
        Stage.PLAN,
        "demand {demand:.1f}/s (arrivals {rate:.1f}/s + queue {queue:.0f}), {capacity:.0f}/s"
        " per replica from busy share {util:.2f}, {need} at a {utilization_target:.0%}"
        " utilisation target",
    )
    LOWER_BOUND = (
        "lower-bound",
        Stage.PLAN,
        "demand {demand:.1f}/s, {capacity:.0f}/s per replica from busy share {util:.2f}"
        " (batches of {batch:.1f}: a lower bound while they do not fill): {replicas} kept"
        " until a fit",
    )
    UNSIZED = ("unsized", Stage.PLAN, "no executed batches to size replicas from")
    STARTUP_STARVES = (
        "startup-starves",
        Stage.PLAN,
        "{starting} starting pod(s) slowed the serving ones {slowdown:.1f}x (t({b:.0f}) ="
        " {measured:.1f} ms, the fit says {fitted:.1f}): they share their compute, so the"
        " start is cancelled at {replicas}",
    )
    NO_ROOM = (
        "no-room",
        Stage.PLAN,
        "a start-up slowed the serving pods {ago:.0f} s ago: at most {replicas} replicas for"
        " {hold:g} s",
    )
    OVERLOAD_STEP = (
        "overload-step",
        Stage.PLAN,
        "p95 missed under lasting overload: at least one more replica",
    )

    # stabilise: up at once, down after a delay and by a bounded step
    SCALE_UP = ("scale-up", Stage.STABILISE, "scale up to {replicas}")
    CANCEL_START = ("cancel-start", Stage.STABILISE, "scale down to {replicas} at once")
    FLAP = (
        "flap",
        Stage.STABILISE,
        "load back {ago:.0f} s after a scale-down: scale-down delay {before:g} -> {after:g} s",
    )
    DOWN_BLOCKED = (
        "down-blocked",
        Stage.STABILISE,
        "{need} would do, but no scale-down while {why}",
    )
    DOWN_WAITING = (
        "down-waiting",
        Stage.STABILISE,
        "{need} would do; waiting for {delay:g} s of low load before scaling down",
    )
    SCALE_DOWN = (
        "scale-down",
        Stage.STABILISE,
        "load low for {delay:g} s: scale down to {replicas} (highest recent need {highest})",
    )
    TAPER = (
        "taper",
        Stage.STABILISE,
        "need falling steadily for {delay:g} s: scale down to {replicas} (highest need in the"
        " last {span:g} s {highest})",
    )
    DOWN_HELD = (
        "down-held",
        Stage.STABILISE,
        "highest need in the last {span:g} s is {highest}",
    )


@dataclass(frozen=True)
class Note:
    """A rule that fired, with the values its text names."""

    rule: Rule
    values: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, rule: Rule, **values: Any) -> Note:
        """The note of ``rule`` with ``values``; fails at once if its text needs others."""
        note = cls(rule, tuple(values.items()))
        note.text()
        return note

    def text(self) -> str:
        return self.rule.text.format(**dict(self.values))


def reason(notes: list[Note]) -> str:
    """The reason text of a decision: each rule that fired, in the order the stages ran."""
    return "; ".join(n.text() for n in notes)
