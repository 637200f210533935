"""Who writes which status field, and what the children are rendered from.

The reconciler and the tuning loop meet only in the BatchedModel's status, and every field
has one writer:

- **The reconciler** (:mod:`batchpilot_operator.reconcile`) writes :data:`RECONCILER_KEYS`:
  what it observed of the children (replicas, readiness, conditions) and ``tuned``, the state
  it rendered them from. Its merge patches never name a field of the loop's.
- **The tuning loop** (:mod:`batchpilot_operator.loop`) writes :data:`LOOP_KEYS`: its state
  (``loop``: the knobs it set and its memory), the last observation and decision, and the
  batching config the pods report in force (:data:`IN_FORCE_KEYS`). It writes them in one
  patch conditional on the ``resourceVersion`` it decided from, so a spec edit made
  meanwhile fails the write and wins.
- With autoscaling off no loop runs: the reconciler shows the config it wrote as in force and
  clears the loop's fields (conditionally too, so it never clears a loop just turned on).

The children are rendered from the spec and status only (:func:`state_to_render`): the
loop's knobs when autoscaling is on, except where the spec was edited since they started.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchpilot_operator.api import BatchedModel, LoopStatus, TunedState, resolve_state

IN_FORCE_KEYS = ("maxBatchSize", "maxWaitMs", "configGeneration")
"""The batching config in force on every pod (the oldest generation they report)."""
OBSERVATION_KEYS = ("requestsPerSecond", "queueDepth", "avgBatchSize", "p95LatencyMs")
"""The last observation window."""
LOOP_KEYS = (*OBSERVATION_KEYS, "lastDecision", "loop", *IN_FORCE_KEYS)
"""What the tuning loop writes while autoscaling is on."""
RECONCILER_KEYS = (
    "observedGeneration",
    "replicas",
    "readyReplicas",
    "ready",
    "selector",
    "tuned",
    "emulated",
    "conditions",
)
"""What the reconciler always writes."""


def reconciler_fields(wanted: Mapping[str, Any], autoscaling: bool) -> dict[str, Any]:
    """The part of ``wanted`` (from :func:`batchpilot_operator.conditions.build_status`) that
    the reconciler writes: with autoscaling on, not the config in force; with it off, that
    too, and the loop's other fields cleared (None in a merge patch)."""
    keys = RECONCILER_KEYS if autoscaling else (*RECONCILER_KEYS, *IN_FORCE_KEYS)
    out = {k: v for k, v in wanted.items() if k in keys}
    if not autoscaling:
        out.update({k: None for k in LOOP_KEYS if k not in IN_FORCE_KEYS})
    return out


def loop_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` checked to be the loop's own (a bug otherwise, never a runtime choice)."""
    stray = set(fields) - set(LOOP_KEYS)
    if stray:
        raise ValueError(f"the tuning loop does not write status fields {sorted(stray)}")
    return dict(fields)


def loop_knobs(loop: LoopStatus | None) -> TunedState | None:
    """The knobs the loop set (with the spec values they started from), if it set any."""
    if loop is None:
        return None
    replicas, size, wait = loop.replicas, loop.max_batch_size, loop.max_wait_ms
    if replicas is None or size is None or wait is None:
        return None
    basis = None
    if loop.from_spec is not None:
        b = loop.from_spec
        basis = (b.replicas, b.max_batch_size, b.max_wait_ms)
    return TunedState(replicas, size, wait, basis=basis)


def state_to_render(bm: BatchedModel) -> TunedState:
    """The tuned state the children are rendered from, from spec and status alone.

    Autoscaling off: the spec's values. On: the knobs the loop set (``status.loop``), or
    before it set any the state last rendered (``status.tuned``), with the spec's value for
    each knob edited since they started, within the spec's bounds. The config generation is
    the one last rendered; the reconciler settles it against the ConfigMap.
    """
    rendered = TunedState.from_status(bm.status)
    previous = rendered
    asked = loop_knobs(bm.status.loop) if bm.spec.autoscaling.enabled else None
    if asked is not None:
        generation = rendered.config_generation if rendered is not None else 0
        previous = TunedState(
            asked.replicas, asked.max_batch_size, asked.max_wait_ms, generation, asked.basis
        )
    return resolve_state(bm.spec, previous)
