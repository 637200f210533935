"""The report of ``bench.loop.on_cluster``: the cluster beside the simulator, per trace."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SHARE_GOAL_POINTS = 5.0
"""The simulator's share within target should be within this many points of the cluster's."""
REPLICA_SECONDS_GOAL = 0.05
"""... and its replica-seconds within this share of the cluster's."""
CHAIN_STAGES = ("pod_object", "scheduled", "process_running", "ready", "first_request_served")


def _by(runs: Sequence[dict[str, Any]], trace: str, policy: str, where: str) -> dict[str, Any]:
    return next(r for r in runs if (r["trace"], r["policy"], r["where"]) == (trace, policy, where))


def comparison_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One row per trace and policy: cluster, simulator, and their difference."""
    rows = [
        "| trace | policy | within target: cluster / simulator (points) | "
        "replica-s: cluster / simulator (diff) | p95 ms: cluster / simulator | within goal |",
        "|---|---|---|---|---|---|",
    ]
    pairs = sorted({(r["trace"], r["policy"]) for r in runs}, key=lambda p: (p[0], p[1]))
    for trace, policy in pairs:
        real, sim = _by(runs, trace, policy, "cluster"), _by(runs, trace, policy, "simulator")
        points = 100 * (sim["within"] - real["within"])
        rel = sim["replica_seconds"] / real["replica_seconds"] - 1 if real["replica_seconds"] else 0
        held = abs(points) <= SHARE_GOAL_POINTS and abs(rel) <= REPLICA_SECONDS_GOAL
        rows.append(
            f"| {trace} | {policy} | {real['within']:.1%} / {sim['within']:.1%} "
            f"({points:+.1f}) | {real['replica_seconds']:.0f} / {sim['replica_seconds']:.0f} "
            f"({rel:+.1%}) | {_ms(real['p95_ms'])} / {_ms(sim['p95_ms'])} | "
            f"{'yes' if held else 'no'} |"
        )
    return rows


def _ms(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.0f}"


def chain_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The scale-up chain over every pod a scale-up created on the cluster."""
    chains = [c for r in runs if r["where"] == "cluster" for c in r["chain"]]
    if not chains:
        return ["No scale-up happened on the cluster."]
    rows = [
        f"Over {len(chains)} pods created by scale-ups, seconds from the operator's Deployment "
        "write (polled every 0.25 s):",
        "",
        "| stage | median s | min s | max s |",
        "|---|---|---|---|",
    ]
    for stage in CHAIN_STAGES:
        values = [c[stage] for c in chains if stage in c]
        if values:
            rows.append(
                f"| {stage.replace('_', ' ')} | {statistics.median(values):.2f} | "
                f"{min(values):.2f} | {max(values):.2f} |"
            )
    return rows


def report(meta: dict[str, Any], runs: Sequence[dict[str, Any]]) -> str:
    """The whole Markdown page."""
    held = sum(1 for row in comparison_table(runs)[2:] if row.endswith("| yes |"))
    return "\n".join(
        [
            "# The loop on the local cluster against the simulator",
            "",
            f"{meta['date']}; `python -m bench.loop.on_cluster {meta['args']}`; "
            f"{meta['machine']}. Each replica is an EMULATED accelerator "
            f"(`emulated://{meta['profile']}`: the real runtime pod, batches are timed waits "
            "from the profile) under the operator installed from the chart; the simulator runs "
            "the same trace shapes, profile and loop settings (its own Poisson draws) with a "
            f"pod start-up of {meta['startup_s']:.1f} s, the median measured below, and "
            f"{meta.get('stop_s', 0.0):.1f} s from a scale-down to the pod gone (the median "
            "measured: the runtime's drain delay and exit). Static: "
            f"{meta['static_replicas']} replicas sized for the peak, batch 8, no wait.",
            "",
            f"Goal: the simulator within {SHARE_GOAL_POINTS:g} points of the cluster's share "
            f"within target and {REPLICA_SECONDS_GOAL:.0%} of its replica-seconds. Met by "
            f"{held} of {len(comparison_table(runs)) - 2} runs.",
            "",
            *comparison_table(runs),
            "",
            "## From a scale-up to the first request on the new pod",
            "",
            *chain_table(runs),
            "",
            "![replicas over time](loop-cluster.png)",
            "",
        ]
    )


def plot(runs: Sequence[dict[str, Any]], rates: dict[str, Any], path: Path) -> None:
    """Ready replicas over time for batchpilot, cluster against simulator, one panel a trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = sorted({r["trace"] for r in runs})
    fig, axes = plt.subplots(len(traces), 1, figsize=(9, 2.4 * len(traces)), sharex=True)
    for ax, trace in zip(axes, traces, strict=True):
        for where, style in (("cluster", "-"), ("simulator", "--")):
            run = _by(runs, trace, "batchpilot", where)
            ts, replicas = zip(*run["replicas"], strict=True) if run["replicas"] else ((), ())
            ax.step(ts, replicas, style, where="post", label=f"batchpilot, {where}")
        ax.set_ylabel("ready replicas")
        ax.set_title(trace, fontsize=10)
        twin = ax.twinx()
        twin.plot(*zip(*rates[trace], strict=True), color="lightgrey", label="offered req/s")
        twin.set_ylabel("req/s", color="grey")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
