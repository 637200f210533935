"""``make demo``: batchpilot's closed loop, live, on this machine.

Starts (or reuses) the local cluster, installs the operator from the Helm chart, applies the
example BatchedModel (all-MiniLM-L6-v2, one CPU thread per replica standing in for a GPU),
drives a load that rises and falls, and shows what the operator does as it happens: a table
like ``kubectl get bm`` refreshing, the last decision and the Events. It ends with a summary
per load phase and a plot (load, p95, replicas, batch size over time).

The cluster and the model stay up afterwards, for ``kubectl get bm -n batchpilot-demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.loadgen import LoadReport, steps
from batchpilot_localcluster.scenario import (
    REPO,
    ScenarioResult,
    StatusSample,
    drive,
    get_model,
    install_operator,
    local_model,
    model_events,
    wait_model_ready,
)
from batchpilot_localcluster.waits import wait_for

NAME = "minilm"
NAMESPACE = "batchpilot-demo"
OPERATOR_NAMESPACE = "batchpilot-system"
TARGET_MS = 150.0
PHASES: tuple[tuple[str, float, float], ...] = (
    # (name, until second, requests per second). The rush forms batches with room on one
    # replica: on 2 cores a second one shares them with the first and the load generator,
    # and at 75-90 requests/s the first starved in 2 of 5 runs (see docs/benchmarks/demo.md).
    ("quiet", 20.0, 4.0),
    ("rush", 90.0, 60.0),
    ("steady", 120.0, 40.0),
    ("night", 200.0, 2.0),
)
OUT = REPO / "bench" / "results"


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def model_manifest() -> dict[str, Any]:
    """The example, with a faster loop so that a few minutes show its decisions."""
    return local_model(NAME, target_ms=TARGET_MS, interval_s=5, scale_down_delay_s=30)


# ----------------------------------------------------------------------------- set-up


def set_up(cluster: LocalCluster) -> None:
    """Cluster up, chart installed, a fresh copy of the example model ready."""
    say("starting the local cluster (control plane, GPU nodes, local node) ...")
    cluster.up(lambda m: say(m))
    say("installing the operator: helm upgrade --install batchpilot charts/batchpilot ...")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    # Watching only the demo's namespace leaves test namespaces on a shared cluster alone.
    install_operator(cluster, OPERATOR_NAMESPACE, values={"watchNamespaces": [NAMESPACE]})
    if get_model(cluster, NAMESPACE, NAME) is not None:
        say(f"removing the previous demo's {NAME} ...")
        cluster.kubectl("-n", NAMESPACE, "delete", "bm", NAME, "--wait", timeout=180)
        wait_for(
            lambda: not cluster.pods(NAMESPACE, f"app.kubernetes.io/instance={NAME}"),
            timeout=120,
            what="the previous demo's pods to go",
        )
    say(f"kubectl apply -f examples/embedding-minilm.yaml (target p95 {TARGET_MS:g} ms) ...")
    cluster.apply(model_manifest(), "-n", NAMESPACE)
    wait_model_ready(cluster, NAMESPACE, NAME)
    say("model ready\n")


def get_bm(cluster: LocalCluster) -> str:
    return cluster.kubectl("-n", NAMESPACE, "get", "bm", check=False).stdout


# --------------------------------------------------------------------------- live view


def offered_rate(t: float) -> float:
    return steps(*((until, rate) for _, until, rate in PHASES))(t)


def phase_at(t: float) -> str:
    return next((name for name, until, _ in PHASES if t < until), PHASES[-1][0])


def bar(done: float, total: float, width: int = 30) -> str:
    filled = int(width * min(1.0, done / total))
    return "#" * filled + "." * (width - filled)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class View:
    """What the live display shows; redrawn once a second."""

    duration: float
    tty: bool
    events: list[dict[str, Any]]
    last_plain: float = -10.0

    def render(self, sample: StatusSample, result: ScenarioResult) -> None:
        t = sample.t
        recent = [o for o in result.load.outcomes if o.sent_at >= t - 5.0]
        p95 = LoadReport.p95_ms(recent)
        rejected = sum(1 for o in result.load.outcomes if o.status == 429)
        failed = sum(1 for o in result.load.outcomes if o.status not in (200, 429))
        ok = sum(1 for o in result.load.outcomes if o.status == 200)
        if not self.tty:
            if t - self.last_plain >= 5.0:
                self.last_plain = t
                print(
                    f"t={t:5.0f}s {phase_at(t):<6} load {offered_rate(t):4.0f}/s "
                    f"p95 {fmt(p95, '.0f'):>5} ms | READY {sample.ready}/{sample.desired} "
                    f"BATCH {sample.max_batch_size} WAIT-MS {fmt(sample.max_wait_ms, 'g')} "
                    f"| {sample.action}",
                    flush=True,
                )
            return
        width = shutil.get_terminal_size((100, 30)).columns
        lines = [
            f"batchpilot demo  [{bar(t, self.duration)}] {t:4.0f}/{self.duration:.0f} s  "
            f"phase: {phase_at(t)}",
            f"load: {offered_rate(t):.0f} req/s offered, client p95 (last 5 s) "
            f"{fmt(p95, '.0f')} ms, target {TARGET_MS:g} ms | ok {ok}, 429 {rejected}, "
            f"failed {failed}",
            "",
            f"$ kubectl get bm -n {NAMESPACE}",
            f"{'NAME':<8} {'READY':<6} {'BATCH':<6} {'WAIT-MS':<8} {'QUEUE':<6} {'RPS':<6} "
            f"{'P95-MS':<7} STATUS",
            f"{NAME:<8} {f'{sample.ready}/{sample.desired}':<6} "
            f"{fmt(sample.max_batch_size, 'd') if sample.max_batch_size is not None else '-':<6} "
            f"{fmt(sample.max_wait_ms, 'g'):<8} {fmt(sample.queue_depth):<6} "
            f"{fmt(sample.requests_per_second):<6} {fmt(sample.p95_latency_ms):<7} "
            f"{sample.state}",
            "",
            f"last decision: {sample.action or '-'}",
            *wrap(sample.reason or "", width, "  "),
            "",
            "events (newest last):",
            *(
                f"  {e.get('reason', ''):<14} {e.get('message', '')}"[:width]
                for e in self.events[-8:]
            ),
        ]
        sys.stdout.write("\x1b[H\x1b[J" + "\n".join(line[:width] for line in lines) + "\n")
        sys.stdout.flush()


def wrap(text: str, width: int, indent: str) -> list[str]:
    out: list[str] = []
    line = indent
    for word in text.split():
        if len(line) + len(word) + 1 > width and line.strip():
            out.append(line)
            line = indent
        line += ("" if line == indent else " ") + word
    if line.strip():
        out.append(line)
    return out[:4]


async def run(cluster: LocalCluster, duration: float) -> ScenarioResult:
    """The load, the live view, and the Events polled alongside."""
    view = View(duration=duration, tty=sys.stdout.isatty(), events=[])

    async def poll_events() -> None:
        while True:
            view.events = await asyncio.to_thread(model_events, cluster, NAMESPACE, NAME)
            await asyncio.sleep(2.0)

    if view.tty:
        sys.stdout.write("\x1b[2J")
    poller = asyncio.create_task(poll_events())
    try:
        return await drive(cluster, NAMESPACE, NAME, offered_rate, duration, on_sample=view.render)
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)


# ---------------------------------------------------------------------------- summary


def summarize(result: ScenarioResult, events: Sequence[dict[str, Any]]) -> str:
    """A Markdown summary: one row per load phase, then the decisions that changed things."""
    rows = [
        "| phase | load req/s | answered ok | client p95 ms | within target | replicas | "
        "max batch size |",
        "|---|---|---|---|---|---|---|",
    ]
    start = 0.0
    for name, until, rate in PHASES:
        window = result.load.window(start, until)
        samples = [s for s in result.samples if start <= s.t < until]
        replicas = sorted({s.desired for s in samples})
        sizes = sorted({s.max_batch_size for s in samples if s.max_batch_size is not None})
        rows.append(
            f"| {name} ({start:.0f}-{until:.0f} s) | {rate:g} | "
            f"{sum(1 for o in window if o.status == 200)} | "
            f"{fmt(LoadReport.p95_ms(window), '.0f')} | "
            f"{result.within(TARGET_MS, start, until):.1%} | "
            f"{'-'.join(str(r) for r in (replicas[0], replicas[-1])) if replicas else '-'} | "
            f"{', '.join(str(s) for s in sizes) or '-'} |"
        )
        start = until
    replica_seconds = sum(s.desired for s in result.samples)  # one sample a second
    lines = [
        f"Target p95 {TARGET_MS:g} ms. Overall {result.within(TARGET_MS):.1%} of the "
        f"{len(result.load.outcomes)} requests answered within it; about "
        f"{replica_seconds} replica-seconds.",
        "",
        *rows,
        "",
        "Decisions (Events on the BatchedModel):",
        "",
        *(
            f"- {e.get('reason')}: {e.get('message')}"
            for e in events
            if e.get("reason") in ("ScaledUp", "ScaledDown", "Retuned", "ConfigInForce")
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(result: ScenarioResult, path: Path) -> None:
    """Load, p95, replicas and batch size over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result.samples
    ts = [s.t for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    load, lat, reps, batch = axes
    load.plot(ts, [offered_rate(t) for t in ts], label="offered", color="grey")
    load.plot(ts, [s.requests_per_second for s in samples], label="observed by the operator")
    load.set_ylabel("req/s")
    load.legend(loc="upper right")
    windows = [t for t in range(0, int(ts[-1]) if ts else 0, 5)]
    client = [result.p95_ms(t, t + 5) for t in windows]
    lat.plot(windows, client, label="client p95 (5 s windows)", marker=".")
    lat.plot(ts, [s.p95_latency_ms for s in samples], label="operator's p95 (per interval)")
    lat.axhline(TARGET_MS, color="red", linestyle="--", label="target")
    lat.set_ylabel("ms")
    lat.set_yscale("log")
    lat.set_ylim(top=TARGET_MS * 3)
    lat.legend(loc="upper right")
    reps.step(ts, [s.desired for s in samples], where="post", label="desired")
    reps.step(ts, [s.ready for s in samples], where="post", label="ready")
    reps.set_ylabel("replicas")
    reps.set_ylim(0, max((s.desired for s in samples), default=1) + 0.5)
    reps.yaxis.get_major_locator().set_params(integer=True)
    reps.legend(loc="upper right")
    batch.step(ts, [s.max_batch_size for s in samples], where="post", label="max batch size")
    twin = batch.twinx()
    twin.step(
        ts, [s.max_wait_ms for s in samples], where="post", color="tab:orange", label="max wait"
    )
    twin.set_ylabel("max wait ms", color="tab:orange")
    batch.set_ylabel("max batch size")
    batch.set_xlabel("seconds")
    for ax in axes:
        for _, until, _ in PHASES[:-1]:
            ax.axvline(until, color="lightgrey", linewidth=0.8)
    fig.suptitle("batchpilot demo: all-MiniLM-L6-v2 on the local cluster")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchpilot-demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT, help="where the summary and plot go")
    args = parser.parse_args(argv)
    cluster = LocalCluster()
    cluster.check_binaries()
    started = time.monotonic()
    set_up(cluster)
    duration = PHASES[-1][1]
    result = asyncio.run(run(cluster, duration))
    events = model_events(cluster, NAMESPACE, NAME)
    summary = summarize(result, events)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo.md").write_text("# batchpilot demo\n\n" + summary)
    (args.out / "demo.json").write_text(
        json.dumps([s.__dict__ for s in result.samples], indent=1) + "\n"
    )
    plot(result, args.out / "demo.png")
    print("\n" + summary)
    print(get_bm(cluster))
    where = args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out
    say(f"summary {where / 'demo.md'}, plot {where / 'demo.png'}")
    say(f"done in {time.monotonic() - started:.0f} s; the cluster keeps running:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f'  export PATH="{cluster.bin}:$PATH"')
    print(f"  kubectl get bm -n {NAMESPACE}; kubectl describe bm {NAME} -n {NAMESPACE}")
    print("  make cluster-down   # stop everything")
    return 0


if __name__ == "__main__":
    sys.exit(main())
