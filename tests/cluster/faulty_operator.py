"""The operator with a fault point: run as ``python faulty_operator.py <operator flags>``.

It runs the real operator (``batchpilot_operator.__main__.main``) with two changes, so that a
test can kill it with SIGKILL at an exact point of a tuning tick:

- the tuning loop's policy holds until a pod has answered ``/metrics``, then asks for one
  replica more and a batch size 8 larger (a scale-up and a config change at once);
- at the fault point named by ``BATCHPILOT_FAULT``, the process writes
  ``BATCHPILOT_FAULT_MARKER`` (JSON) and stops making progress on that model: every later
  reconcile blocks, so nothing else closes the window before the kill.

Fault points, in the order a tick reaches them:

- ``after-loop-write``: the loop's status write (``status.loop``) succeeded; its reconcile
  has not started.
- ``between-children``: in the loop's reconcile, the ConfigMap has been written and the
  Deployment not yet (``desired_children`` applies the ConfigMap first).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import batchpilot_operator.handlers as handlers
from batchpilot_operator import __main__ as operator_main
from batchpilot_operator import loopkube, reconcile
from batchpilot_operator.loop import TuningLoop
from batchpilot_operator.metrics import Observation
from batchpilot_operator.policy import CurrentState, Decision, Regime, Rule, TuningSpec
from batchpilot_operator.policy.rules import Note

FAULT = os.environ.get("BATCHPILOT_FAULT", "")
MARKER = Path(os.environ.get("BATCHPILOT_FAULT_MARKER", "fault-marker.json"))
POINTS = ("after-loop-write", "between-children")

_changed = threading.Event()  # the policy has decided a change
_armed = threading.Event()  # the fault point was reached: block every reconcile
_in_loop = threading.local()  # set while the loop's own reconcile runs in this thread


def _stall(point: str, **detail: Any) -> None:
    """Record that the fault point was reached, then never return (the test kills us)."""
    _armed.set()
    MARKER.write_text(json.dumps({"fault": point, "pid": os.getpid(), **detail}))
    threading.Event().wait()


def step_up(obs: Observation, cur: CurrentState, spec: TuningSpec, now: float) -> Decision:
    """Hold until a pod answered, then one replica more and a batch size 8 larger."""
    if obs.pods_scraped == 0 or _changed.is_set():
        return Decision(
            action="hold",
            replicas=cur.replicas,
            max_batch_size=cur.max_batch_size,
            max_wait_ms=cur.max_wait_ms,
            regime=Regime.UNJUDGED,
            config_rule=Rule.NO_METRICS,
            replica_rule=Rule.NO_METRICS,
            notes=(Note(Rule.NO_METRICS),),
            replicas_changed=False,
            config_changed=False,
            recommendations=cur.recommendations,
        )
    _changed.set()
    replicas = min(cur.replicas + 1, spec.max_replicas)
    size = min(cur.max_batch_size + 8, spec.max_batch_size)
    return Decision(
        action="scale-up+retune",
        replicas=replicas,
        max_batch_size=size,
        max_wait_ms=cur.max_wait_ms,
        regime=Regime.OVERLOAD,
        config_rule=Rule.BATCH_INCREASE,
        replica_rule=Rule.SCALE_UP,
        notes=(Note.of(Rule.SCALE_UP, replicas=replicas),),
        replicas_changed=True,
        config_changed=True,
        recommendations=(*cur.recommendations, (now, replicas)),
        needed_replicas=replicas,
    )


class FaultyLoop(TuningLoop):
    """The tuning loop with :func:`step_up` as its policy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = step_up


def install(point: str) -> None:
    """Patch the fault point ``point`` into the operator's modules."""
    if point not in POINTS:
        raise SystemExit(f"BATCHPILOT_FAULT must be one of {POINTS}, not {point!r}")
    handlers.TuningLoop = FaultyLoop  # type: ignore[misc]

    converge_locked = reconcile._converge_locked

    def blocking_converge(*args: Any, **kwargs: Any) -> Any:
        if _armed.is_set():
            threading.Event().wait()
        return converge_locked(*args, **kwargs)

    reconcile._converge_locked = blocking_converge

    patch_status = loopkube.KubeForLoop.patch_status

    def loop_write(
        self: loopkube.KubeForLoop,
        namespace: str,
        name: str,
        fields: Mapping[str, Any],
        resource_version: str | None,
    ) -> bool:
        ok = patch_status(self, namespace, name, fields, resource_version)
        if ok and point == "after-loop-write" and _changed.is_set():
            _stall(point, loop=fields.get("loop"))
        return ok

    loopkube.KubeForLoop.patch_status = loop_write  # type: ignore[method-assign]

    loop_reconcile = loopkube.KubeForLoop.reconcile

    def marked_reconcile(self: loopkube.KubeForLoop, namespace: str, name: str) -> Any:
        _in_loop.active = True
        try:
            return loop_reconcile(self, namespace, name)
        finally:
            _in_loop.active = False

    loopkube.KubeForLoop.reconcile = marked_reconcile  # type: ignore[method-assign]

    ensure = reconcile._ensure

    def ensure_child(c: Any, child: dict[str, Any], live: dict[str, Any] | None) -> Any:
        applied, action = ensure(c, child, live)
        if (
            point == "between-children"
            and child["kind"] == "ConfigMap"
            and action
            and getattr(_in_loop, "active", False)
            and _changed.is_set()
        ):
            _stall(point, configmap=action)
        return applied, action

    reconcile._ensure = ensure_child


if __name__ == "__main__":
    install(FAULT)
    operator_main.main(sys.argv[1:])
