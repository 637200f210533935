"""The replica loop on the real control plane, on EMULATED GPUs.

Each replica is the real runtime pod (HTTP, batcher, metrics, config reload) whose batches
are timed waits from the ``bert-large-l4`` profile (t(b) = 4 + 6.7*b ms; one replica carries
about 100 requests/s within a 150 ms p95), one emulated GPU each, so several replicas fit on
this machine's two cores. The operator runs from the Helm chart. A load step must make the
loop add replicas from the measured load within a few intervals and bring the p95 back under
the target; once the load is gone they must go, not before the scale-down delay, one bounded
step at a time. With a ``minReplicas`` floor, a burst adds replicas and the scale-down after
it stops at the floor. Bounded: about three and a half minutes for both.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.loadgen import steps
from batchpilot_localcluster.scenario import (
    ScenarioResult,
    drive,
    emulated_model,
    get_model,
    install_operator,
    model_events,
    wait_model_ready,
)
from batchpilot_localcluster.waits import wait_for
from batchpilot_operator.policy import TuningSpec

NAME = "encoder"
TARGET_MS = 150.0
INTERVAL_S = 3
SCALE_DOWN_DELAY_S = 20
MAX_REPLICAS = 6
SCALE_DOWN_STEP = TuningSpec.scale_down_step
TAPER_SHARE = TuningSpec.taper_share


def start(cluster: LocalCluster, namespace: str, manifest: dict[str, Any], replicas: int) -> None:
    install_operator(
        cluster, namespace, release=f"bp-{namespace}"[:40].rstrip("-"),
        values={"watchNamespaces": [namespace]},
    )  # fmt: skip
    cluster.apply(manifest, "-n", namespace)
    wait_model_ready(cluster, namespace, NAME, replicas=replicas)


def manifest(min_replicas: int = 1) -> dict[str, Any]:
    return emulated_model(
        NAME,
        target_ms=TARGET_MS,
        interval_s=INTERVAL_S,
        scale_down_delay_s=SCALE_DOWN_DELAY_S,
        min_replicas=min_replicas,
        max_replicas=MAX_REPLICAS,
    )


def tuned_replicas(cluster: LocalCluster, namespace: str) -> int:
    bm = get_model(cluster, namespace, NAME) or {}
    return int(bm.get("status", {}).get("tuned", {}).get("replicas", 0))


def timeline(result: ScenarioResult) -> str:
    """What happened, second by second: for failure messages."""
    rows = []
    for s in result.samples:
        p95 = result.p95_ms(s.t - 3, s.t)
        rows.append(
            f"{s.t:5.0f}s {s.ready}/{s.desired} need {s.needed_replicas} batch "
            f"{s.max_batch_size} client-p95 {p95 if p95 is None else round(p95)} "
            f"{s.action}: {(s.reason or '')[:140]}"
        )
    return "\n".join(rows)


def replicas_until(
    cluster: LocalCluster, namespace: str, replicas: int, timeout: float
) -> list[tuple[float, int]]:
    """Poll the tuned replicas once a second until they are ``replicas``: (time, replicas)."""
    seen: list[tuple[float, int]] = []

    def done() -> bool:
        seen.append((time.monotonic(), tuned_replicas(cluster, namespace)))
        return seen[-1][1] == replicas

    wait_for(done, timeout=timeout, interval=1.0, what=f"{replicas} replica(s)",
             describe=lambda: f"replicas seen {[r for _, r in seen]}")  # fmt: skip
    return seen


STEP_AT, STEP_END = 10.0, 70.0
LOW, HIGH = 20.0, 250.0  # HIGH needs about three replicas; one carries at most 139/s


def test_a_load_step_adds_replicas_that_go_in_bounded_steps_after_the_delay(
    cluster: LocalCluster, namespace: str
) -> None:
    start(cluster, namespace, manifest(), replicas=1)
    began = time.monotonic()
    result = asyncio.run(
        drive(cluster, namespace, NAME, steps((STEP_AT, LOW), (STEP_END, HIGH)), STEP_END)
    )
    story = timeline(result)

    # Replicas come from the measured load, within a few intervals of the step.
    up = [s for s in result.samples if s.desired >= 2]
    assert up, f"the loop never added a replica\n{story}"
    assert up[0].t <= STEP_AT + 6 * INTERVAL_S, f"first scale-up at {up[0].t:.0f} s\n{story}"
    peak = max(s.desired for s in result.samples)
    assert 2 <= peak < MAX_REPLICAS, f"{peak} replicas for {HIGH:g} requests/s\n{story}"
    # ... and the p95 is back under the target while the step holds.
    settled = [
        p95
        for t in range(int(up[0].t) + 10, int(STEP_END) - 10)
        if (p95 := result.p95_ms(t, t + 10)) is not None
    ]
    assert settled, story
    assert min(settled) <= TARGET_MS, f"client p95 never back under target\n{story}"
    assert result.within(TARGET_MS, STEP_END - 20, STEP_END) >= 0.9, story

    # The load is gone: the replicas go, after the delay, one bounded step at a time.
    seen = replicas_until(cluster, namespace, 1, timeout=SCALE_DOWN_DELAY_S + 90)
    need = max((s.t for s in result.samples if (s.needed_replicas or 0) >= 2), default=0.0)
    at_end = result.samples[-1].desired
    counts = [at_end] + [r for _, r in seen]
    first_down = next((t for t, r in seen if r < at_end), None)
    assert first_down is not None, counts
    for before, after in itertools.pairwise(counts):
        assert after >= before - max(1, math.floor(before * SCALE_DOWN_STEP)), counts
    events = model_events(cluster, namespace, NAME)
    down = [e["message"] for e in events if e["reason"] == "ScaledDown"]
    first = next((m for m in down if m.startswith(f"replicas {at_end}->")), None)
    assert first is not None, down
    # The whole delay, or a quarter of it where the need fell steadily (the windows that
    # straddle the load's end can read as a fall in steps).
    hold = SCALE_DOWN_DELAY_S * (TAPER_SHARE if "falling steadily" in first else 1.0)
    assert first_down - (began + need) >= hold - INTERVAL_S, (
        f"scaled down {first_down - began - need:.0f} s after the last need: {first}\n{story}"
    )
    scaled_up = [e["message"] for e in events if e["reason"] == "ScaledUp"]
    assert scaled_up, events
    assert "demand" in scaled_up[0]  # sized from the measured load
    bm = get_model(cluster, namespace, NAME) or {}
    assert bm["status"]["emulated"] == "bert-large-l4"


def test_a_burst_scales_up_and_the_scale_down_stops_at_the_floor(
    cluster: LocalCluster, namespace: str
) -> None:
    start(cluster, namespace, manifest(min_replicas=2), replicas=2)
    # Quiet, a burst beyond the floor's two replicas (one carries at most 139/s), then none.
    load = steps((10, 20.0), (35, 320.0), (50, 0.0))
    result = asyncio.run(drive(cluster, namespace, NAME, load, 50.0))
    story = timeline(result)
    assert result.samples, story
    assert max(s.desired for s in result.samples) >= 3, f"the burst added no replica\n{story}"
    assert min(s.desired for s in result.samples) >= 2, f"went below the floor\n{story}"
    # The load is gone: the replicas come down to the floor and stay there.
    seen = replicas_until(cluster, namespace, 2, timeout=SCALE_DOWN_DELAY_S + 90)
    assert min(r for _, r in seen) == 2, seen
    time.sleep(SCALE_DOWN_DELAY_S / 2)
    assert tuned_replicas(cluster, namespace) == 2
