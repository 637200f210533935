"""``make demo``: batchpilot's closed loop, live, on this machine, in two parts.

Starts (or reuses) the local cluster, installs the operator from the Helm chart and applies
two BatchedModels, then drives a load that rises and falls against each in turn while
showing what the operator does: a table like ``kubectl get bm`` refreshing, the last
decision and the Events.

1. **Real inference**: ``examples/embedding-minilm.yaml`` (all-MiniLM-L6-v2, one CPU thread
   per replica standing in for a GPU). Two replicas cannot share this machine's two cores,
   so this part shows batch size and wait retuned on one replica.
2. **Emulated GPUs**: ``examples/embedding-emulated-gpu.yaml``. No model runs: each replica
   is the real runtime whose batches are timed waits from the ``bert-large-l4`` service-time
   profile, one emulated GPU each. A load rising to 300 requests per second makes the loop
   go from one replica to several and back, retuning batch size and wait as it goes.

Each part ends with a summary per load phase and a plot. The cluster and both models stay
up afterwards, for ``kubectl get bm -n batchpilot-demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from batchpilot_contract.labels import instance_selector
from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.demo_view import DemoPart, Phase, View, plot, summarize
from batchpilot_localcluster.loadgen import ramps, steps
from batchpilot_localcluster.scenario import (
    REPO,
    ScenarioResult,
    drive,
    emulated_model,
    get_model,
    install_operator,
    local_model,
    model_events,
    wait_model_ready,
)
from batchpilot_localcluster.waits import wait_for

NAMESPACE = "batchpilot-demo"
OPERATOR_NAMESPACE = "batchpilot-system"
OUT = REPO / "bench" / "results"
TARGET_MS = 150.0
INTERVAL_S = 5
SCALE_DOWN_DELAY_S = 30

# The rush forms batches with room on one replica: on 2 cores a second one shares them with
# the first and the load generator.
REAL = DemoPart(
    name="minilm",
    title="all-MiniLM-L6-v2, real inference on one CPU thread per replica",
    manifest=local_model(
        "minilm",
        target_ms=TARGET_MS,
        interval_s=INTERVAL_S,
        scale_down_delay_s=SCALE_DOWN_DELAY_S,
    ),
    rate=steps((20.0, 4.0), (90.0, 60.0), (120.0, 40.0), (160.0, 2.0)),
    phases=(
        Phase("quiet", 0, 20, "4"),
        Phase("rush", 20, 90, "60"),
        Phase("steady", 90, 120, "40"),
        Phase("night", 120, 160, "2"),
    ),
    target_ms=TARGET_MS,
    plot_file="demo.png",
)

# Within the target, one emulated replica carries about a third of the peak (the profile's
# service time t(b) sets how much), so the peak needs three; the ramp is slow enough for the
# replicas it asks for to start on the way (start-up: docs/benchmarks/loop-cluster.md).
EMULATED = DemoPart(
    name="large-encoder",
    title="bert-large-l4 profile on EMULATED GPUs (no model runs)",
    manifest=emulated_model(
        "large-encoder",
        target_ms=TARGET_MS,
        interval_s=INTERVAL_S,
        scale_down_delay_s=SCALE_DOWN_DELAY_S,
    ),
    rate=ramps((0, 20), (20, 20), (100, 300), (130, 300), (160, 20), (200, 20)),
    phases=(
        Phase("quiet", 0, 20, "20"),
        Phase("ramp", 20, 100, "20 -> 300"),
        Phase("peak", 100, 130, "300"),
        Phase("fall", 130, 160, "300 -> 20"),
        Phase("night", 160, 200, "20"),
    ),
    target_ms=TARGET_MS,
    plot_file="demo-emulated.png",
)

PARTS = {"real": (REAL,), "emulated": (EMULATED,), "all": (REAL, EMULATED)}


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def pods_gone(cluster: LocalCluster, selector: str) -> bool:
    return not cluster.pods(NAMESPACE, selector)


def set_up(cluster: LocalCluster, parts: Sequence[DemoPart]) -> None:
    """Cluster up, chart installed, a fresh copy of each part's model ready."""
    say("starting the local cluster (control plane, GPU nodes, local node) ...")
    cluster.up(lambda m: say(m))
    say("installing the operator: helm upgrade --install batchpilot charts/batchpilot ...")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    # Watching only the demo's namespace leaves test namespaces on a shared cluster alone.
    install_operator(cluster, OPERATOR_NAMESPACE, values={"watchNamespaces": [NAMESPACE]})
    for part in parts:
        if get_model(cluster, NAMESPACE, part.name) is not None:
            say(f"removing the previous demo's {part.name} ...")
            cluster.kubectl("-n", NAMESPACE, "delete", "bm", part.name, "--wait", timeout=180)
            selector = instance_selector(part.name)
            wait_for(
                partial(pods_gone, cluster, selector),
                timeout=120,
                what=f"the previous demo's {part.name} pods to go",
            )
    for part in parts:
        say(f"kubectl apply: {part.name} ({part.title}), target p95 {part.target_ms:g} ms")
        cluster.apply(part.manifest, "-n", NAMESPACE)
    for part in parts:
        wait_model_ready(cluster, NAMESPACE, part.name)
        say(f"{part.name} ready")


async def run(cluster: LocalCluster, part: DemoPart) -> ScenarioResult:
    """The load, the live view, and the Events polled alongside."""
    view = View(part=part, namespace=NAMESPACE, tty=sys.stdout.isatty())

    async def poll_events() -> None:
        while True:
            view.events = await asyncio.to_thread(model_events, cluster, NAMESPACE, part.name)
            await asyncio.sleep(2.0)

    if view.tty:
        sys.stdout.write("\x1b[2J")
    poller = asyncio.create_task(poll_events())
    try:
        return await drive(
            cluster, NAMESPACE, part.name, part.rate, part.duration, on_sample=view.render
        )
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchpilot-demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT, help="where the summary and plots go")
    parser.add_argument(
        "--part", choices=sorted(PARTS), default="all", help="which part to run (default: all)"
    )
    args = parser.parse_args(argv)
    parts = PARTS[args.part]
    cluster = LocalCluster()
    cluster.check_binaries()
    started = time.monotonic()
    set_up(cluster, parts)
    summaries, samples = [], {}
    for part in parts:
        say(f"part: {part.title}, {part.duration:.0f} s of load\n")
        result = asyncio.run(run(cluster, part))
        summary = summarize(part, result, model_events(cluster, NAMESPACE, part.name))
        print("\n" + summary + "\n", flush=True)
        summaries.append(summary)
        samples[part.name] = [s.__dict__ for s in result.samples]
        plot(part, result, args.out / part.plot_file)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo.md").write_text("# batchpilot demo\n\n" + "\n\n".join(summaries) + "\n")
    (args.out / "demo.json").write_text(json.dumps(samples, indent=1) + "\n")
    print(cluster.kubectl("-n", NAMESPACE, "get", "bm", check=False).stdout)
    where = args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out
    plots = ", ".join(str(where / p.plot_file) for p in parts)
    say(f"summary {where / 'demo.md'}, plots {plots}")
    say(f"done in {time.monotonic() - started:.0f} s; the cluster keeps running:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f'  export PATH="{cluster.bin}:$PATH"')
    print(f"  kubectl get bm -n {NAMESPACE}; kubectl describe bm {EMULATED.name} -n {NAMESPACE}")
    print("  make cluster-down   # stop everything")
    return 0


if __name__ == "__main__":
    sys.exit(main())
