"""A pod's status from its containers' statuses: phase, conditions, IPs. Pure.

Conditions keep their lastTransitionTime until their status flips; `transitions` carries that
memory between calls (condition type -> (status, time)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

JSON = dict[str, Any]

OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


def phase(
    init: Sequence[JSON],
    containers: Sequence[JSON],
    *,
    init_done: bool,
    init_failed: bool,
    restart_policy: str,
) -> str:
    """Kubernetes' pod phase for these container statuses."""
    if init_failed and restart_policy == "Never":
        return "Failed"
    if not init_done:
        return "Pending"
    states = [c.get("state", {}) for c in containers]
    if states and all("terminated" in s for s in states):
        return (
            "Succeeded" if all(s["terminated"].get("exitCode") == 0 for s in states) else "Failed"
        )
    if any("running" in s for s in states):
        return "Running"
    # Restarting after a crash still counts as Running, as kubelet reports it.
    if any(c.get("lastState", {}).get("terminated") for c in containers):
        return "Running"
    return "Pending"


def _condition(
    kind: str,
    ok: bool,
    transitions: dict[str, tuple[str, str]],
    now: str,
    reason: str = "",
    message: str = "",
) -> JSON:
    status = "True" if ok else "False"
    previous = transitions.get(kind)
    since = previous[1] if previous is not None and previous[0] == status else now
    transitions[kind] = (status, since)
    condition: JSON = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    if not ok and reason:
        condition["reason"] = reason
    if not ok and message:
        condition["message"] = message
    return condition


def pod_status(
    pod: JSON,
    *,
    init: Sequence[JSON],
    containers: Sequence[JSON],
    init_done: bool,
    init_failed: bool,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    transitions: dict[str, tuple[str, str]],
    now: str,
) -> JSON:
    restart_policy = str(pod.get("spec", {}).get("restartPolicy", "Always"))
    current = phase(
        init,
        containers,
        init_done=init_done,
        init_failed=init_failed,
        restart_policy=restart_policy,
    )
    unready = [c["name"] for c in containers if not c.get("ready")]
    all_ready = not unready and current == "Running"
    pending_init = [c["name"] for c in init if not c.get("state", {}).get("terminated")]
    unready_msg = f"containers with unready status: [{' '.join(unready)}]"
    conditions = [
        _condition("PodReadyToStartContainers", bool(pod_ip), transitions, now),
        _condition(
            "Initialized",
            init_done,
            transitions,
            now,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_init)}]",
        ),
        _condition(
            "ContainersReady", all_ready, transitions, now, "ContainersNotReady", unready_msg
        ),
        _condition("Ready", all_ready, transitions, now, "ContainersNotReady", unready_msg),
    ]
    # Keep what others own (PodScheduled from the scheduler, readiness gates, ...).
    others = [
        c
        for c in pod.get("status", {}).get("conditions") or []
        if c.get("type") not in OWN_CONDITIONS
    ]
    status: JSON = {
        "phase": current,
        "conditions": [*others, *conditions],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": list(containers),
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if init:
        status["initContainerStatuses"] = list(init)
    return status
