"""The loop on a noisy machine: the demo's real-model load with a CPU hog beside the replica.

On the local cluster (real operator from the chart, real all-MiniLM-L6-v2 pods), the first
part of ``make demo`` runs twice, each with a process spinning on one of the machine's cores
through the whole load: once with the loop on, once with autoscaling off, holding the config
the loop starts from. The loop should serve at least the hold's share of requests within
target, at no more replica-seconds than it needs for that.

    python -m bench.loop.noisy_cluster   # about 10 minutes; writes bench/results/noisy-cluster.*
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from batchpilot_contract.labels import instance_selector
from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.demo import (
    INTERVAL_S,
    REAL,
    SCALE_DOWN_DELAY_S,
    TARGET_MS,
)
from batchpilot_localcluster.scenario import (
    ScenarioResult,
    drive,
    install_operator,
    local_model,
    merge,
    wait_model_ready,
)
from batchpilot_localcluster.waits import wait_for

NAMESPACE = "batchpilot-noisy"
OPERATOR_NAMESPACE = "batchpilot-system"
RESULTS = Path(__file__).resolve().parents[1] / "results"
HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
"""A process that keeps one core busy for ``seconds``: the other work on a shared machine."""


@dataclass
class Mode:
    """One run: the loop on, or the starting config held."""

    name: str
    autoscaling: bool


MODES = (Mode("loop", True), Mode("hold", False))


def manifest(mode: Mode) -> dict[str, Any]:
    """The demo's real model; with the loop off, the same starting config held."""
    base = local_model(
        f"noisy-{mode.name}",
        target_ms=TARGET_MS,
        interval_s=INTERVAL_S,
        scale_down_delay_s=SCALE_DOWN_DELAY_S,
    )
    return merge(base, {"spec": {"autoscaling": {"enabled": mode.autoscaling}}})


def replica_seconds(result: ScenarioResult) -> float:
    """Desired replicas integrated over the samples of the run."""
    samples = result.samples
    return sum(a.desired * (b.t - a.t) for a, b in pairwise(samples))


def run_mode(cluster: LocalCluster, mode: Mode) -> dict[str, Any]:
    """Apply the model, load it with the hog running, delete it; the figures of the run."""
    body = manifest(mode)
    name = body["metadata"]["name"]
    cluster.apply(body, "-n", NAMESPACE)
    wait_model_ready(cluster, NAMESPACE, name)
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG.format(seconds=REAL.duration + 10)],
        stdout=subprocess.DEVNULL,
    )
    try:
        result = asyncio.run(drive(cluster, NAMESPACE, name, REAL.rate, REAL.duration))
    finally:
        hog.terminate()
        hog.wait(timeout=10)
    phases = {p.name: round(result.within(TARGET_MS, p.start, p.end), 4) for p in REAL.phases}
    out = {
        "mode": mode.name,
        "requests": len(result.load.outcomes),
        "within": round(result.within(TARGET_MS), 4),
        "within_by_phase": phases,
        "replica_seconds": round(replica_seconds(result), 1),
        "max_replicas": max((s.desired for s in result.samples), default=0),
        "batch_sizes": sorted({s.max_batch_size for s in result.samples if s.max_batch_size}),
        "decisions": [
            f"{s.t:.0f}s {s.action}: {s.reason}"
            for s in result.samples
            if s.action and s.action != "hold"
        ][:40],
    }
    cluster.kubectl("-n", NAMESPACE, "delete", "bm", name, "--wait", timeout=180)
    selector = instance_selector(name)
    wait_for(
        lambda: not cluster.pods(NAMESPACE, selector),
        timeout=120,
        what=f"{name}'s pods to go",
    )
    return out


def report(runs: list[dict[str, Any]], elapsed_s: float) -> str:
    """The Markdown summary."""
    lines = [
        "# The loop on a noisy machine",
        "",
        "Produced by `python -m bench.loop.noisy_cluster` "
        f"({elapsed_s:.0f} s): the first part of `make demo` (real all-MiniLM-L6-v2 on the "
        "local cluster) with one core kept busy by another process through the load, with "
        f"the loop on and with the starting config held; target p95 {TARGET_MS:g} ms.",
        "",
        "| mode | requests | within target | "
        + " | ".join(p.name for p in REAL.phases)
        + " | replica-seconds | most replicas | batch sizes |",
        "|---|---:|---:|" + "---:|" * len(REAL.phases) + "---:|---:|---|",
    ]
    for r in runs:
        phases = " | ".join(f"{r['within_by_phase'][p.name]:.1%}" for p in REAL.phases)
        lines.append(
            f"| {r['mode']} | {r['requests']} | {r['within']:.1%} | {phases} |"
            f" {r['replica_seconds']:.0f} | {r['max_replicas']} |"
            f" {', '.join(map(str, r['batch_sizes']))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    cluster = LocalCluster()
    cluster.check_binaries()
    cluster.up(print)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    install_operator(cluster, OPERATOR_NAMESPACE, values={"watchNamespaces": [NAMESPACE]})
    runs = [run_mode(cluster, mode) for mode in MODES]
    elapsed = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noisy-cluster.json").write_text(json.dumps(runs, indent=1) + "\n")
    text = report(runs, elapsed)
    (args.out / "noisy-cluster.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
