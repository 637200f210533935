"""The loop on the real control plane against the simulator: same traces, profile and policy.

Replays the loop benchmark's four traces, compressed to ``--duration`` seconds at ``--peak``
requests/s, against a BatchedModel on EMULATED GPUs (``emulated://bert-large-l4``: the real
runtime pods, batches are timed waits from the profile) with the operator from the Helm
chart, and runs the same traces, profile and loop settings through the simulator
(``bench.loop.simulator``, which drives the operator's own ``decide()``). Each trace runs
under batchpilot and under a static deployment sized for the peak. The report puts side by
side, per trace: the share of requests within the target, the p95, the replica-seconds and
the replicas over time; and, from the cluster runs, the time from a scale-up to the first
request served by the new pod, broken down (the Deployment write, the Pod object, scheduling,
process start, ready, first request routed to it).

    python -m bench.loop.on_cluster   # about 30 minutes: 8 cluster runs of 3 minutes

Writes ``bench/results/loop-cluster.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench.loop import traces as shapes
from bench.loop.policies import BatchpilotPolicy, StaticPolicy
from bench.loop.simulator import ClusterSettings, ServiceProfile, Trace, run_virtual, simulate

from batchpilot_contract.batching import BatchingConfig
from batchpilot_contract.labels import instance_selector
from batchpilot_contract.pod import PORT
from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.scenario import (
    REPO,
    ScenarioResult,
    drive,
    emulated_model,
    install_operator,
    merge,
    wait_model_ready,
)
from batchpilot_localcluster.waits import wait_for
from batchpilot_operator.policy import TuningSpec
from batchpilot_runtime.backends.emulated import Profile, load_profile

OUT = REPO / "bench" / "results"
NAMESPACE = "batchpilot-bench"
PROFILE = "bert-large-l4"
TARGET_MS = 150.0
INTERVAL_S = 5
SCALE_DOWN_DELAY_S = 30
MAX_REPLICAS = 6
START = BatchingConfig(max_batch_size=16, max_wait_ms=5)
STATIC_BATCH = 8
"""The batch whose ``2 t(b)`` fits the target's latency budget on this profile."""


def compressed_traces(peak: float, duration_s: float) -> list[Trace]:
    """The loop benchmark's shapes, at the same proportions over ``duration_s``."""
    scale = duration_s / 900.0
    return [
        shapes.step(peak, duration_s),
        shapes.diurnal(peak, duration_s),
        shapes.bursts(peak, duration_s, on_s=60 * scale, off_s=120 * scale),
        shapes.spike(peak, duration_s, width_s=max(5.0, 30 * scale)),
    ]


def simulator_profile(profile: Profile, seed: int, draws: int = 50_000) -> ServiceProfile:
    """The emulated profile as the simulator reads it: one stage, the spread replayed in order
    (a recording drawn from the profile's own spread)."""
    sizes = range(1, (profile.max_batch or 64) + 1)
    sampler = profile.spread.sampler(random.Random(seed))
    return ServiceProfile(
        tokenize=tuple(0.0 for _ in sizes),
        forward=tuple(profile.batch_seconds(b) for b in sizes),
        source=f"emulated://{profile.name}",
        jitter=tuple(sampler.draw() for _ in range(draws)),
        jitter_in_order=True,
    )


def static_replicas(profile: Profile, peak: float) -> int:
    """Replicas that carry the peak at 80% busy with batches of ``STATIC_BATCH``."""
    per_replica = STATIC_BATCH / profile.batch_seconds(STATIC_BATCH)
    return math.ceil(peak / (0.8 * per_replica))


# --------------------------------------------------------------------------- the cluster


@dataclass
class PodTimes:
    """When the watcher first saw each stage of one pod (seconds since the load began)."""

    name: str
    created: float
    ip: str = ""
    scheduled: float | None = None
    running: float | None = None
    ready: float | None = None
    terminating: float | None = None
    gone: float | None = None


@dataclass
class Watch:
    """Pods and the Deployment's replicas, polled four times a second."""

    pods: dict[str, PodTimes] = field(default_factory=dict)
    scaled: list[tuple[float, int]] = field(default_factory=list)
    """(time, spec.replicas) at each change of the Deployment's desired replicas."""


def watch(cluster: LocalCluster, name: str, t0: float, stop: threading.Event, into: Watch) -> None:
    selector = instance_selector(name)
    while not stop.is_set():
        now = time.monotonic() - t0
        seen = set()
        for pod in cluster.pods(NAMESPACE, selector):
            pod_name = pod["metadata"]["name"]
            seen.add(pod_name)
            times = into.pods.setdefault(pod_name, PodTimes(pod_name, now))
            if pod["metadata"].get("deletionTimestamp"):
                if times.terminating is None:
                    times.terminating = now
                continue
            status = pod.get("status") or {}
            times.ip = status.get("podIP") or times.ip
            if times.scheduled is None and pod["spec"].get("nodeName"):
                times.scheduled = now
            if times.running is None and status.get("phase") == "Running":
                times.running = now
            ready = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if times.ready is None and ready.get("Ready") == "True":
                times.ready = now
        for times in into.pods.values():
            if times.gone is None and times.name not in seen:
                times.gone = now
        deployment = cluster.api.get_or_none(
            f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}"
        )
        if deployment is not None:
            replicas = int(deployment["spec"].get("replicas") or 0)
            if not into.scaled or into.scaled[-1][1] != replicas:
                into.scaled.append((now, replicas))
        stop.wait(0.25)


@dataclass
class Run:
    """One trace under one policy, on the cluster or in the simulator."""

    trace: str
    policy: str
    where: str
    within: float
    p95_ms: float
    replica_seconds: float
    replicas: list[tuple[float, int]]
    """(time, ready replicas), once a second."""
    chain: list[dict[str, float]] = field(default_factory=list)
    stops: list[float] = field(default_factory=list)
    """Seconds from each scale-down's pod deletion to the pod gone."""


def cluster_run(cluster: LocalCluster, trace: Trace, policy: str, peak: float) -> Run:
    profile = load_profile(PROFILE)
    name = f"{policy}-{trace.name}"
    manifest = emulated_model(
        name,
        target_ms=TARGET_MS,
        interval_s=INTERVAL_S,
        scale_down_delay_s=SCALE_DOWN_DELAY_S,
        max_replicas=MAX_REPLICAS,
    )
    start_replicas = 1
    manifest = merge(manifest, {"spec": {"batching": START.model_dump(by_alias=True)}})
    if policy == "static":
        start_replicas = static_replicas(profile, peak)
        manifest = merge(
            manifest,
            {
                "spec": {
                    "replicas": start_replicas,
                    "batching": {"maxBatchSize": STATIC_BATCH, "maxWaitMs": 0},
                    "autoscaling": {"enabled": False},
                }
            },
        )
    manifest["spec"]["batching"].pop("generation", None)
    cluster.apply(manifest, "-n", NAMESPACE)
    wait_model_ready(cluster, NAMESPACE, name, replicas=start_replicas)
    stop, seen = threading.Event(), Watch()
    t0 = time.monotonic()
    watcher = threading.Thread(target=watch, args=(cluster, name, t0, stop, seen), daemon=True)
    watcher.start()
    try:
        result = asyncio.run(drive(cluster, NAMESPACE, name, trace.rate, trace.duration_s))
    finally:
        stop.set()
        watcher.join()
    cluster.kubectl("-n", NAMESPACE, "delete", "bm", name, "--wait", timeout=180)
    wait_for(
        lambda: not cluster.pods(NAMESPACE, instance_selector(name)),
        timeout=120,
        what=f"{name}'s pods to go",
    )
    return Run(
        trace=trace.name,
        policy=policy,
        where="cluster",
        within=result.within(TARGET_MS),
        p95_ms=_p95(result),
        replica_seconds=_replica_seconds(seen, trace.duration_s),
        replicas=[(s.t, s.ready) for s in result.samples],
        chain=_chains(seen, result),
        stops=[
            p.gone - p.terminating
            for p in seen.pods.values()
            if p.gone is not None and p.terminating is not None
        ],
    )


def _p95(result: ScenarioResult) -> float:
    """The p95 over every request, a refused or failed one counting as infinitely late."""
    latencies = [o.latency_s if o.status == 200 else math.inf for o in result.load.outcomes]
    # No interpolation: between two infinitely late requests it would give inf - inf.
    return float(np.quantile(latencies, 0.95, method="higher")) * 1000 if latencies else 0.0


def _replica_seconds(seen: Watch, duration_s: float) -> float:
    total = 0.0
    for pod in seen.pods.values():
        end = min(duration_s, pod.gone if pod.gone is not None else duration_s)
        total += max(0.0, end - max(0.0, pod.created))
    return total


def _chains(seen: Watch, result: ScenarioResult) -> list[dict[str, float]]:
    """For each pod created by a scale-up during the load: seconds from the Deployment write
    to each stage."""
    chains = []
    for pod in seen.pods.values():
        if pod.created <= 0.5 or pod.ready is None:
            continue
        writes = [t for t, _ in seen.scaled if t <= pod.created]
        if not writes:
            continue
        wrote = writes[-1]
        # Pod addresses are reused: only what was sent after this pod existed counts.
        served = [
            o.sent_at + o.latency_s
            for o in result.load.outcomes
            if o.status == 200
            and o.sent_at >= pod.created
            and pod.ip
            and o.endpoint.endswith(f"//{pod.ip}:{PORT}")
        ]
        chain = {
            "pod_object": pod.created - wrote,
            "scheduled": (pod.scheduled or pod.created) - wrote,
            "process_running": (pod.running or pod.ready) - wrote,
            "ready": pod.ready - wrote,
        }
        if served:
            chain["first_request_served"] = min(served) - wrote
        chains.append(chain)
    return chains


# ------------------------------------------------------------------------- the simulator


def stop_seconds(runs: list[Run]) -> float:
    """The median time from a pod's deletion to its object gone, over the cluster runs."""
    stops = [s for r in runs for s in r.stops]
    return statistics.median(stops) if stops else 0.0


def simulator_run(
    trace: Trace, policy: str, peak: float, startup_s: float, stop_s: float, seed: int
) -> Run:
    profile = load_profile(PROFILE)
    spec = TuningSpec(
        latency_target_ms=TARGET_MS,
        min_replicas=1,
        max_replicas=MAX_REPLICAS,
        max_batch_size=64,
        max_wait_ms=20,
        interval_s=INTERVAL_S,
        scale_down_delay_s=SCALE_DOWN_DELAY_S,
    )
    chosen: Any
    if policy == "static":
        config = BatchingConfig(max_batch_size=STATIC_BATCH, max_wait_ms=0)
        chosen = StaticPolicy(static_replicas(profile, peak), config)
    else:
        chosen = BatchpilotPolicy(spec, start_replicas=1, start_config=START)
    result = run_virtual(
        simulate(
            trace,
            chosen,
            simulator_profile(profile, seed),
            target_s=TARGET_MS / 1000,
            settings=ClusterSettings(
                startup_s=startup_s, config_delay_s=(0.4, 0.9), stop_s=stop_s, seed=seed
            ),
            seed=seed,
        )
    )
    return Run(
        trace=trace.name,
        policy=policy,
        where="simulator",
        within=result.within,
        p95_ms=result.quantile(0.95) * 1000,
        replica_seconds=result.replica_seconds,
        replicas=[(s.time, s.replicas_ready) for s in result.timeline],
    )


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    from bench.loop import cluster_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", type=float, default=300.0, help="requests/s at the peak")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds per trace")
    parser.add_argument("--traces", default="step-4x,diurnal,on-off,spike")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    wanted = args.traces.split(",")
    chosen = [t for t in compressed_traces(args.peak, args.duration) if t.name in wanted]
    cluster = LocalCluster()
    cluster.check_binaries()
    cluster.up(print)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    install_operator(
        cluster, NAMESPACE, release="bp-bench", values={"watchNamespaces": [NAMESPACE]}
    )
    runs: list[Run] = []
    for trace in chosen:
        for policy in ("batchpilot", "static"):
            print(f"cluster: {trace.name} under {policy} ...", flush=True)
            runs.append(cluster_run(cluster, trace, policy, args.peak))
    starts = [c["ready"] for r in runs for c in r.chain]
    startup_s = statistics.median(starts) if starts else load_profile(PROFILE).load_seconds
    stop_s = stop_seconds(runs)
    for trace in chosen:
        for policy in ("batchpilot", "static"):
            runs.append(simulator_run(trace, policy, args.peak, startup_s, stop_s, args.seed))
    profile = load_profile(PROFILE)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "args": " ".join(argv or []) or "(defaults)",
        "machine": "2 cores, 24 GiB, no GPU",
        "profile": PROFILE,
        "startup_s": startup_s,
        "stop_s": stop_s,
        "static_replicas": static_replicas(profile, args.peak),
        "peak": args.peak,
        "duration_s": args.duration,
    }
    documents = [asdict(r) for r in runs]
    rates = {t.name: [(s, t.rate(s)) for s in np.arange(0, t.duration_s, 1.0)] for t in chosen}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop-cluster.json").write_text(
        json.dumps({"meta": meta, "runs": documents}, indent=1) + "\n"
    )
    (args.out / "loop-cluster.md").write_text(cluster_report.report(meta, documents))
    cluster_report.plot(documents, rates, args.out / "loop-cluster.png")
    print(cluster_report.report(meta, documents))


if __name__ == "__main__":
    main()
