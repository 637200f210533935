"""Who writes which status field, what the reconcile renders from (spec and status only), and
the loop's state in status.loop."""

from __future__ import annotations

from typing import Any

import pytest

from batchpilot_operator import api, conditions, desired
from batchpilot_operator.api import BatchedModel, LoopStatus, TunedState
from batchpilot_operator.loopstate import Clocks, LoopState, compress
from batchpilot_operator.ownership import (
    IN_FORCE_KEYS,
    LOOP_KEYS,
    RECONCILER_KEYS,
    loop_fields,
    reconciler_fields,
    state_to_render,
)
from policystubs import stub_decision


def model(status: dict[str, Any] | None = None, enabled: bool = True, **spec: Any) -> BatchedModel:
    return BatchedModel.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "generation": 1},
            "spec": {
                "model": {"uri": "hf://org/m", "task": "embedding"},
                "replicas": 1,
                "batching": {"maxBatchSize": 8, "maxWaitMs": 5},
                "autoscaling": {"enabled": enabled, "maxReplicas": 4, "maxBatchSize": 64},
                **spec,
            },
            "status": status or {},
        }
    )


TUNED = {"replicas": 1, "maxBatchSize": 8, "maxWaitMs": 5.0, "configGeneration": 3}
BASIS = {"replicas": 1, "maxBatchSize": 8, "maxWaitMs": 5.0}
LOOP = {"replicas": 3, "maxBatchSize": 16, "maxWaitMs": 2.0, "fromSpec": BASIS}


def test_every_status_field_has_one_writer() -> None:
    fields = set(api.BatchedModelStatus.model_json_schema(by_alias=True)["properties"])
    assert set(RECONCILER_KEYS) | set(LOOP_KEYS) == fields
    assert not set(RECONCILER_KEYS) & set(LOOP_KEYS)


def test_the_reconciler_writes_none_of_the_loops_fields_while_it_runs() -> None:
    bm = model({"tuned": {**TUNED, "fromSpec": BASIS}})
    state = TunedState(1, 8, 5.0, 3)
    wanted = conditions.build_status(bm, state, conditions.Observed(None), "2026-01-01T00:00:00Z")
    assert set(reconciler_fields(wanted, autoscaling=True)) <= set(RECONCILER_KEYS)
    off = reconciler_fields(wanted, autoscaling=False)
    assert {k: off[k] for k in IN_FORCE_KEYS} == {
        "maxBatchSize": 8,
        "maxWaitMs": 5.0,
        "configGeneration": 3,
    }
    assert all(off[k] is None for k in LOOP_KEYS if k not in IN_FORCE_KEYS)  # cleared
    with pytest.raises(ValueError, match="conditions"):
        loop_fields({"lastDecision": {}, "conditions": []})


def test_the_reconcile_renders_the_loops_knobs_from_status() -> None:
    bm = model({"tuned": {**TUNED, "fromSpec": BASIS}, "loop": LOOP})
    state = state_to_render(bm)
    assert state == TunedState(3, 16, 2.0, 3)  # the generation last rendered
    children = desired.desired_children(bm, state)
    deployment = next(c for c in children if c["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3
    # Nothing but spec and status: the same object, any resourceVersion, renders the same.
    again = model({"tuned": {**TUNED, "fromSpec": BASIS}, "loop": LOOP})
    assert desired.desired_children(again, state_to_render(again)) == children


def test_a_spec_edit_since_the_loops_knobs_started_wins_for_that_knob() -> None:
    bm = model({"tuned": {**TUNED, "fromSpec": BASIS}, "loop": LOOP}, replicas=2)
    assert state_to_render(bm) == TunedState(2, 16, 2.0, 3)
    bounded = model(
        {"tuned": {**TUNED, "fromSpec": BASIS}, "loop": LOOP},
        autoscaling={"enabled": True, "maxReplicas": 2, "maxBatchSize": 64},
    )
    assert state_to_render(bounded).replicas == 2  # within edited bounds


def test_without_the_loop_the_reconcile_renders_the_spec_or_what_it_rendered() -> None:
    off = model({"tuned": {**TUNED, "fromSpec": BASIS}, "loop": LOOP}, enabled=False)
    assert state_to_render(off) == TunedState(1, 8, 5.0, 3)
    before_any_tick = model({"tuned": {**TUNED, "replicas": 2, "fromSpec": BASIS}})
    assert state_to_render(before_any_tick) == TunedState(2, 8, 5.0, 3)
    new = model()
    assert state_to_render(new) == TunedState(1, 8, 5.0, 0)


def test_the_loop_state_survives_status_on_another_clock() -> None:
    running = TunedState(2, 16, 2.0, 3, basis=(1, 8, 5.0))
    state = LoopState.fresh(running)
    decision = stub_decision(
        *("scale-up", 3, 16, 2.0, True, False),
        recommendations=((90.0, 2), (95.0, 3)),
        utilization_target=0.75,
        last_miss=80.0,
        last_no_room=70.0,
        no_room_replicas=2,
    )
    after = state.after(decision, state.current(running), running, now=100.0)
    assert after.memory.last_scale_up == 100.0
    written = after.to_status(Clocks(monotonic=100.0, wall=1_767_225_600.0))
    assert written["lastScaleUp"] == "2026-01-01T00:00:00.000Z"
    assert written["lastMiss"] == "2025-12-31T23:59:40.000Z"
    assert written["lastScaleDown"] is None  # named, so the merge patch clears an old one
    assert written["fromSpec"] == {"replicas": 1, "maxBatchSize": 8, "maxWaitMs": 5.0}

    now_rendered = TunedState(3, 16, 2.0, 3, basis=(1, 8, 5.0))
    back = LoopState.from_status(
        LoopStatus.model_validate(written),
        now_rendered,
        Clocks(monotonic=7.0, wall=1_767_225_600.0 + 2.0),
    )
    assert back.set_here(now_rendered)
    current = back.current(now_rendered)
    assert (current.replicas, current.utilization_target) == (3, 0.75)
    assert current.last_scale_up == pytest.approx(5.0)
    assert current.last_miss == pytest.approx(-15.0)
    assert (current.last_no_room, current.no_room_replicas) == (pytest.approx(-25.0), 2)
    assert [(round(t, 3), r) for t, r in current.recommendations] == [(-5.0, 2), (0.0, 3)]
    assert not back.set_here(TunedState(4, 16, 2.0, 3))  # set outside the loop


def test_recommendations_keep_runs_as_their_ends_within_the_limit() -> None:
    recs = ((1.0, 2), (2.0, 2), (3.0, 2), (4.0, 3), (5.0, 2), (6.0, 2))
    assert compress(recs) == [(1.0, 2), (3.0, 2), (4.0, 3), (5.0, 2), (6.0, 2)]
    assert compress(recs, limit=2) == [(5.0, 2), (6.0, 2)]
    assert compress(()) == []
