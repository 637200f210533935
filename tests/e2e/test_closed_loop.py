"""The closed loop end to end: the chart's operator tunes real runtime pods under real load.

The operator runs as a pod from the Helm chart (its RBAC only); the model is the example
BatchedModel (all-MiniLM-L6-v2 from the node's model cache), one CPU thread per replica; the
load is open-loop HTTP against the ready pods. A load step must make the loop retune the
batching through the ConfigMap (which the pods then report in force) and add a replica; p95
must come back under the target while the load holds; when the load stops, the replicas must
come down, but not before the scale-down delay. Bounded: about four minutes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.loadgen import steps
from batchpilot_localcluster.scenario import (
    ScenarioResult,
    drive,
    example_model,
    get_model,
    install_operator,
    model_events,
)
from batchpilot_localcluster.waits import wait_for

NAME = "minilm"
TARGET_MS = 150.0
INTERVAL_S = 3
SCALE_DOWN_DELAY_S = 20
LOW, HIGH = 5.0, 45.0
STEP_AT, STEP_END = 10.0, 80.0


def model_manifest() -> dict[str, Any]:
    return example_model(
        {
            "metadata": {"name": NAME},
            "spec": {
                "env": [{"name": "BATCHPILOT_THREADS", "value": "1"}],
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "latencyTargetMs": TARGET_MS,
                    "intervalSeconds": INTERVAL_S,
                    "scaleDownDelaySeconds": SCALE_DOWN_DELAY_S,
                },
            },
        }
    )


def configmap_generation(cluster: LocalCluster, namespace: str) -> int:
    cm = cluster.api.get(f"/api/v1/namespaces/{namespace}/configmaps/{NAME}-batching")
    return int(json.loads(cm["data"]["batching.json"])["generation"])


def test_load_step_retunes_scales_and_recovers_then_scales_down(
    cluster: LocalCluster, namespace: str
) -> None:
    install_operator(
        cluster, namespace, release=f"bp-{namespace}"[:40].rstrip("-"),
        values={"watchNamespaces": [namespace]},
    )  # fmt: skip
    cluster.apply(model_manifest(), "-n", namespace)
    wait_for(
        lambda: (get_model(cluster, namespace, NAME) or {}).get("status", {}).get("ready") == "1/1",
        timeout=300,
        what="the model's first replica to be ready",
    )
    first = get_model(cluster, namespace, NAME)
    assert first is not None
    start_generation = int(first["status"]["configGeneration"])

    result: ScenarioResult = asyncio.run(
        drive(cluster, namespace, NAME, steps((STEP_AT, LOW), (STEP_END, HIGH)), STEP_END)
    )
    load_stopped = time.monotonic()
    during = [s for s in result.samples if s.t >= STEP_AT]

    # The step made the loop act: more replicas, and a new batching config.
    assert max(s.desired for s in during) == 2, [s.reason for s in during if s.action != "hold"]
    tuned = [s for s in during if (s.config_generation or 0) > start_generation]
    assert tuned, "the batching config was never retuned under the step"

    # p95 back under the target while the load holds (the last 20 s of the step).
    p95 = result.p95_ms(STEP_END - 20, STEP_END)
    assert p95 is not None
    assert p95 <= TARGET_MS, f"client p95 {p95:.0f} ms over the last 20 s of the step"
    assert result.within(TARGET_MS, STEP_END - 20, STEP_END) >= 0.9

    # The pods report the config the ConfigMap holds (status shows what is in force).
    def in_force() -> bool:
        bm = get_model(cluster, namespace, NAME) or {}
        return bm.get("status", {}).get("configGeneration") == configmap_generation(
            cluster, namespace
        )

    wait_for(in_force, timeout=30, what="the pods to report the ConfigMap's generation")

    # When the load stops, replicas come down, after the delay.
    def scaled_down() -> float | None:
        bm = get_model(cluster, namespace, NAME) or {}
        tuned_replicas = bm.get("status", {}).get("tuned", {}).get("replicas")
        return time.monotonic() - load_stopped if tuned_replicas == 1 else None

    after = wait_for(scaled_down, timeout=SCALE_DOWN_DELAY_S + 60, what="the scale-down")
    assert after >= SCALE_DOWN_DELAY_S - INTERVAL_S, f"scaled down {after:.0f} s after the load"

    bm = get_model(cluster, namespace, NAME)
    assert bm is not None
    status = bm["status"]
    assert status["lastDecision"]["action"] in ("scale-down", "hold", "scale-down+retune")
    assert status["lastDecision"]["reason"]
    assert {"requestsPerSecond", "queueDepth", "p95LatencyMs"} <= set(status)
    reasons = [e["reason"] for e in model_events(cluster, namespace, NAME)]
    assert "ScaledUp" in reasons
    assert "ScaledDown" in reasons
    assert "ConfigInForce" in reasons
    assert "Retuned" in reasons or any(
        "maxBatchSize" in e["message"] or "maxWaitMs" in e["message"]
        for e in model_events(cluster, namespace, NAME)
    )
