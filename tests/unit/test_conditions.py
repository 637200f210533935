"""Conditions and status: transitions, reasons from pods, and no churn."""

from __future__ import annotations

from typing import Any

import pytest

from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.conditions import (
    Observed,
    Problem,
    build_status,
    desired_conditions,
    merge_conditions,
    now_rfc3339,
    pod_problems,
    status_patch,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def deployment(
    replicas: int, ready: int, updated: int | None = None, total: int | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas if total is None else total,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            **extra,
        },
    }


def pod(name: str = "p", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def waiting(reason: str, message: str = "", last: dict[str, Any] | None = None) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "runtime", "state": {"waiting": {"reason": reason}}}
    if message:
        cs["state"]["waiting"]["message"] = message
    if last:
        cs["lastState"] = {"terminated": last}
    return cs


def by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_no_deployment_yet() -> None:
    got = by_type(desired_conditions(1, 2, Observed(None)))
    assert got == {
        "Ready": ("False", "WaitingForReplicas"),
        "Progressing": ("True", "Creating"),
        "Degraded": ("False", "AsExpected"),
    }


def test_all_ready() -> None:
    got = by_type(desired_conditions(1, 2, Observed(deployment(2, 2))))
    assert got == {
        "Ready": ("True", "Ready"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }


def test_scaling_up_and_rolling_out() -> None:
    assert by_type(desired_conditions(1, 3, Observed(deployment(3, 1))))["Progressing"] == (
        "True",
        "ScalingUp",
    )
    rolling = deployment(2, 2, updated=1, total=3)
    got = by_type(desired_conditions(1, 2, Observed(rolling)))
    assert got["Progressing"] == ("True", "RollingOut")
    assert got["Ready"] == ("True", "Ready")  # surge pods keep serving capacity
    stale = deployment(2, 2)
    stale["status"]["observedGeneration"] = 1
    assert by_type(desired_conditions(1, 2, Observed(stale)))["Progressing"][1] == "RollingOut"
    down = deployment(1, 1, total=3, updated=3)
    assert by_type(desired_conditions(1, 1, Observed(down)))["Progressing"][1] == "ScalingDown"


def test_scaled_to_zero_is_ready() -> None:
    got = by_type(desired_conditions(1, 0, Observed(deployment(0, 0))))
    assert got["Ready"] == ("True", "ScaledToZero")


def test_crashing_model_is_degraded_with_the_pods_reason() -> None:
    crash = pod(
        "m-abc",
        phase="Running",
        containerStatuses=[
            waiting(
                "CrashLoopBackOff",
                "back-off 10s restarting failed container",
                last={"reason": "Error", "exitCode": 1},
            )
        ],
    )
    conditions = desired_conditions(1, 1, Observed(deployment(1, 0), [crash]))
    got = by_type(conditions)
    assert got["Ready"] == ("False", "CrashLoopBackOff")
    assert got["Degraded"] == ("True", "CrashLoopBackOff")
    message = next(c["message"] for c in conditions if c["type"] == "Degraded")
    assert "m-abc" in message
    assert "back-off 10s" in message
    assert "last exit: Error, code 1" in message


@pytest.mark.parametrize(
    ("last", "said"),
    [
        (
            {"reason": "Error", "exitCode": 3, "message": "task rerank: 3 output labels"},
            "task rerank: 3 output labels",
        ),
        ({"reason": "Error", "exitCode": 3}, "the model cannot serve its task"),
    ],
    ids=["with the runtime's message", "exit code alone"],
)
def test_a_model_refused_at_load_is_degraded_with_why(last: dict[str, Any], said: str) -> None:
    crash = pod(
        "m-abc",
        phase="Running",
        containerStatuses=[waiting("CrashLoopBackOff", "back-off 10s", last=last)],
    )
    conditions = desired_conditions(1, 1, Observed(deployment(1, 0), [crash]))
    got = by_type(conditions)
    assert got["Ready"] == ("False", "ModelRefused")
    assert got["Degraded"] == ("True", "ModelRefused")
    message = next(c["message"] for c in conditions if c["type"] == "Degraded")
    assert "m-abc" in message
    assert said in message


@pytest.mark.parametrize(
    ("p", "reason"),
    [
        (pod(phase="Pending", containerStatuses=[waiting("ImagePullBackOff")]), "ImagePullBackOff"),
        (pod(phase="Pending", containerStatuses=[waiting("ErrImagePull")]), "ErrImagePull"),
        (pod(phase="Pending", containerStatuses=[waiting("ImageNotRunnable")]), "ImageNotRunnable"),
        (
            pod(phase="Pending", containerStatuses=[waiting("CreateContainerConfigError")]),
            "CreateContainerConfigError",
        ),
        (
            pod(
                phase="Pending",
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ],
            ),
            "Unschedulable",
        ),
        (pod(phase="Failed", reason="Evicted", message="low memory"), "Evicted"),
        (
            pod(
                phase="Running",
                containerStatuses=[
                    {
                        "name": "runtime",
                        "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                    }
                ],
            ),
            "OOMKilled",
        ),
    ],
)
def test_pod_problem_reasons(p: dict[str, Any], reason: str) -> None:
    assert [x.reason for x in pod_problems([p])] == [reason]


def test_healthy_starting_and_deleted_pods_are_not_problems() -> None:
    starting = pod(phase="Pending", containerStatuses=[waiting("ContainerCreating")])
    running = pod(
        phase="Running", containerStatuses=[{"name": "runtime", "state": {"running": {}}}]
    )
    gone = pod(phase="Running", containerStatuses=[waiting("CrashLoopBackOff")])
    gone["metadata"]["deletionTimestamp"] = T0
    assert pod_problems([starting, running, gone]) == []


def test_stalled_deployment() -> None:
    dep = deployment(
        1,
        0,
        conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": "quota",
            },
        ],
    )
    got = by_type(desired_conditions(1, 1, Observed(dep)))
    assert got["Progressing"] == ("False", "ProgressDeadlineExceeded")
    assert got["Degraded"][0] == "True"


def test_operator_error_is_degraded() -> None:
    err = Problem("ReconcileError", "the API server said 500")
    got = by_type(desired_conditions(1, 1, Observed(deployment(1, 1), error=err)))
    assert got["Degraded"] == ("True", "ReconcileError")
    assert got["Ready"] == ("True", "Ready")


def test_last_transition_time_moves_only_on_flips() -> None:
    first = merge_conditions(None, desired_conditions(1, 1, Observed(deployment(1, 0))), T0)
    assert {c["lastTransitionTime"] for c in first} == {T0}
    # Same statuses, different reasons or messages: timestamps stay.
    crash = pod(containerStatuses=[waiting("CrashLoopBackOff")])
    second = merge_conditions(
        first, desired_conditions(1, 1, Observed(deployment(1, 0), [crash])), T1
    )
    stamps = {c["type"]: c["lastTransitionTime"] for c in second}
    assert stamps["Ready"] == T0  # still False, now CrashLoopBackOff
    assert stamps["Degraded"] == T1  # flipped False -> True
    assert stamps["Progressing"] == T0
    third = merge_conditions(second, desired_conditions(2, 1, Observed(deployment(1, 1))), T1)
    assert {c["type"]: c["lastTransitionTime"] for c in third}["Ready"] == T1


def test_foreign_conditions_are_kept() -> None:
    previous = [{"type": "Tuned", "status": "True", "reason": "X", "lastTransitionTime": T0}]
    merged = merge_conditions(previous, desired_conditions(1, 1, Observed(None)), T1)
    assert [c["type"] for c in merged] == ["Ready", "Progressing", "Degraded", "Tuned"]


def bm(status: dict[str, Any] | None = None) -> BatchedModel:
    return BatchedModel.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "generation": 3},
            "spec": {"model": {"uri": "hf://o/m", "task": "embedding"}, "replicas": 2},
            "status": status or {},
        }
    )


def test_status_is_stable_when_nothing_changed() -> None:
    state = TunedState(2, 32, 5.0, 4)
    observed = Observed(deployment(2, 1))
    first = build_status(bm(), state, observed, T0)
    assert first["ready"] == "1/2"
    assert (first["replicas"], first["readyReplicas"], first["observedGeneration"]) == (2, 1, 3)
    assert (first["maxBatchSize"], first["maxWaitMs"], first["configGeneration"]) == (32, 5.0, 4)
    assert (
        first["selector"]
        == "app.kubernetes.io/instance=m,app.kubernetes.io/name=batchpilot-runtime"
    )
    assert first["tuned"] == state.to_status()
    assert status_patch({}, first) == first
    # The same observation later: nothing to write.
    again = build_status(bm(first), state, observed, T1)
    assert status_patch(first, again) == {}
    # Another pod becomes ready: only what changed is written.
    ready = build_status(bm(first), state, Observed(deployment(2, 2)), T1)
    patch = status_patch(first, ready)
    assert set(patch) == {"readyReplicas", "ready", "conditions"}


def test_status_says_when_the_replicas_emulate_an_accelerator() -> None:
    state, observed = TunedState(1, 32, 5.0, 1), Observed(deployment(1, 1))
    emulated = bm().model_copy(
        update={
            "spec": bm().spec.model_copy(
                update={"model": bm().spec.model.model_copy(update={"uri": "emulated://x-gpu"})}
            )
        }
    )
    shown = build_status(emulated, state, observed, T0)
    assert shown["emulated"] == "x-gpu"
    # Back to a real model: the field is cleared; a real model never had it.
    assert build_status(bm(shown), state, observed, T1)["emulated"] is None
    assert "emulated" not in build_status(bm(), state, observed, T0)


def test_now_is_rfc3339() -> None:
    stamp = now_rfc3339()
    assert len(stamp) == 20
    assert stamp.endswith("Z")
