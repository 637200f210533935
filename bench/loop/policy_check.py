"""The loop's policy on its own: the benchmark traces and a disturbed steady load.

Runs only what a change to ``policy.decide`` moves (the baselines of ``bench.loop.run`` do
not depend on it), so that a policy change is measured before and after in minutes:

* ``traces``: batchpilot, and batchpilot with the trace's ``minReplicas`` floor kept in
  ``bench/results/loop.json``, on the four load traces at several seeds;
* ``disturbed``: a steady load while every replica slows down (service time doubled for a
  minute; short slow spells every 15 s; both), and a steady load on replicas that share
  one node's two cores (a start-up holds one for its model load), the loop against holding
  the config it starts from. The loop should serve at least the hold's share within
  target, at no more replica-seconds than it needs for that.

    python -m bench.loop.policy_check --name policy-before   # full traces, seeds 1-3
    python -m bench.loop.policy_check --quick --name policy-before-quick
    python -m bench.loop.policy_check --compare policy-before policy-after

Writes ``bench/results/<name>.json``; ``--compare`` prints the table of two such files.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from bench.loop import traces
from bench.loop.policies import BatchpilotPolicy, StaticPolicy
from bench.loop.run import HERE, RESULTS, Setup, start_replicas
from bench.loop.simulator import (
    ClusterSettings,
    Disturbance,
    Trace,
    run_virtual,
    simulate,
)

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator.policy import TuningSpec

DISTURBANCES = {
    "doubling": Disturbance(((120.0, 180.0, 2.0),)),
    "spells": Disturbance(tuple((t, t + 2.0, 3.0) for t in range(60, 300, 15))),
    "both": Disturbance(((120.0, 180.0, 2.0), *((t, t + 2.0, 3.0) for t in range(60, 300, 15)))),
}
"""Named slow spells: ``(start_s, end_s, factor)`` on every replica's service time."""
STEADY_S = 300.0
STEADY_SHARES = (0.3, 0.5)
"""The disturbed runs' steady rates, as shares of the peak."""
SHARED_NODE = "shared-node"
"""Replicas on one node of two cores, a start-up holding one for its model load: what a
second replica costs and adds where pods share their compute."""
SHARED_CORES, SHARED_STARTUP_CPU_S = 2, 8.0
SHARED_RATES = (120.0, 170.0)
"""The shared-node runs' steady rates: within one replica's reach, and near its limit."""


@dataclass(frozen=True)
class Run:
    """One simulated run: a trace or a disturbed steady load, under one policy."""

    trace: str
    policy: str  # batchpilot | batchpilot-floor | hold
    seed: int
    floor: int = 0
    disturbance: str = ""
    rate: float = 0.0
    """The steady rate of a disturbed run."""


@dataclass
class Outcome:
    run: Run
    requests: int
    within: float
    p95_ms: float
    replica_seconds: float
    decisions: int
    wall_s: float


def _steady(rate: float) -> Trace:
    return Trace(f"steady-{rate:g}", STEADY_S, lambda _t: rate, rate)


def _floors() -> dict[str, int]:
    """The floors ``bench.loop.run`` kept per trace (its batchpilot-floor rows)."""
    rows = json.loads((RESULTS / "loop.json").read_text())["rows"]
    return {r["trace"]: r["floor"] for r in rows if r["policy"] == "batchpilot-floor"}


def execute(setup: Setup, run: Run, overrides: tuple[tuple[str, float], ...] = ()) -> Outcome:
    """Simulate one run (in a worker process); ``overrides`` set policy constants."""
    profile = setup.profile()
    trace = _steady(run.rate) if run.disturbance else setup.trace(run.trace)
    start = start_replicas(setup, trace, profile)
    spec = TuningSpec(**{**asdict(setup.spec()), **dict(overrides)})
    shared = run.disturbance == SHARED_NODE
    if shared:
        spec, start = replace(spec, min_replicas=1), 1
    if run.policy == "batchpilot-floor":
        spec = TuningSpec(**{**asdict(spec), "min_replicas": run.floor})
        start = max(start, run.floor)
    config = BatchingConfig()
    policy: Any
    if run.policy == "hold":
        policy = StaticPolicy(start, config.model_copy(update={"generation": 1}))
    else:
        policy = BatchpilotPolicy(spec, start_replicas=start, start_config=config)
    settings = ClusterSettings(
        startup_s=setup.startup_s,
        config_delay_s=setup.config_delay_s,
        disturbance=DISTURBANCES.get(run.disturbance),
        shared_cores=SHARED_CORES if shared else 0,
        startup_cpu_s=SHARED_STARTUP_CPU_S if shared else 0.0,
        seed=run.seed,
    )
    t0 = time.perf_counter()
    res = run_virtual(
        simulate(
            trace,
            policy,
            profile,
            target_s=setup.target_ms / 1000,
            settings=settings,
            seed=run.seed,
        )
    )
    return Outcome(
        run=run,
        requests=res.requests,
        within=res.within,
        p95_ms=res.quantile(0.95) * 1e3,
        replica_seconds=res.replica_seconds,
        decisions=len(res.decisions),
        wall_s=time.perf_counter() - t0,
    )


def plan(setup: Setup, seeds: list[int]) -> list[Run]:
    """Every run of one check."""
    floors = _floors()
    names = [t.name for t in traces.all_traces(setup.peak, setup.duration_s)]
    runs = [Run(n, "batchpilot", s) for n in names for s in seeds]
    runs += [Run(n, "batchpilot-floor", s, floor=floors[n]) for n in names for s in seeds]
    for share in STEADY_SHARES:
        rate = share * setup.peak
        for d in DISTURBANCES:
            for policy in ("batchpilot", "hold"):
                runs += [
                    Run(f"steady-{rate:g}", policy, s, disturbance=d, rate=rate) for s in seeds
                ]
    for rate in SHARED_RATES:
        for policy in ("batchpilot", "hold"):
            runs += [
                Run(f"steady-{rate:g}", policy, s, disturbance=SHARED_NODE, rate=rate)
                for s in seeds
            ]
    return runs


def _key(o: dict[str, Any]) -> tuple[str, str, str, int]:
    r = o["run"]
    return (r["trace"], r["disturbance"], r["policy"], r["seed"])


def compare(before: Path, after: Path) -> str:
    """A Markdown table: per trace and policy, the mean over seeds of the share within
    target and the replica-seconds, before and after."""
    a = json.loads(before.read_text())["outcomes"]
    b = json.loads(after.read_text())["outcomes"]
    groups: dict[tuple[str, str, str], list[list[float]]] = {}
    seen_after = {_key(o): o for o in b}
    for o in a:
        key = _key(o)
        if key not in seen_after:
            continue
        x, y = o, seen_after[key]
        row = [x["within"], y["within"], x["replica_seconds"], y["replica_seconds"]]
        groups.setdefault(key[:3], []).append(row)
    lines = [
        "| trace | disturbance | policy | seeds | within before | after | replica-s before |"
        " after |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    loop_rows: list[list[float]] = []
    for (trace, disturbance, policy), rows in sorted(groups.items()):
        m = [sum(col) / len(rows) for col in zip(*rows, strict=True)]
        lines.append(
            f"| {trace} | {disturbance or '-'} | {policy} | {len(rows)} | {m[0]:.2%} |"
            f" {m[1]:.2%} | {m[2]:.0f} | {m[3]:.0f} |"
        )
        if policy != "hold":
            loop_rows += rows
    if loop_rows:
        m = [sum(col) / len(loop_rows) for col in zip(*loop_rows, strict=True)]
        lines.append(
            f"| every loop run | | | {len(loop_rows)} | {m[0]:.2%} | {m[1]:.2%} |"
            f" {m[2]:.0f} | {m[3]:.0f} |"
        )
    return "\n".join(lines)


def ablations(base: Path, variants: list[Path]) -> str:
    """A Markdown table: what switching each rule off does, against ``base`` on the same
    runs: the mean share within target and replica-seconds, and the trace it costs most."""
    ref = {_key(o): o for o in json.loads(base.read_text())["outcomes"]}
    lines = [
        "| switched off | constants | runs | within | change | replica-s | change |"
        " most share lost on |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for path in variants:
        data = json.loads(path.read_text())
        pairs = [(ref[_key(o)], o) for o in data["outcomes"] if _key(o) in ref]
        if not pairs:
            continue
        n = len(pairs)
        w0 = sum(a["within"] for a, _ in pairs) / n
        w1 = sum(b["within"] for _, b in pairs) / n
        r0 = sum(a["replica_seconds"] for a, _ in pairs) / n
        r1 = sum(b["replica_seconds"] for _, b in pairs) / n
        worst_a, worst_b = min(pairs, key=lambda p: p[1]["within"] - p[0]["within"])
        run = worst_b["run"]
        where = f"{run['trace']} {run['disturbance'] or ''} seed {run['seed']}".replace("  ", " ")
        lost = worst_b["within"] - worst_a["within"]
        consts = ", ".join(f"{k}={v:g}" for k, v in data.get("overrides", {}).items())
        lines.append(
            f"| {path.stem.removeprefix('ablate-')} | {consts} | {n} | {w1:.2%} |"
            f" {100 * (w1 - w0):+.2f} pts | {r1:.0f} | {100 * (r1 / r0 - 1):+.1f}% |"
            f" {where} ({100 * lost:+.1f} pts) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="240 s traces, one seed")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--name", default="policy")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument(
        "--ablations",
        nargs="+",
        metavar="NAME",
        help="print what each ablation run (a result file) changes against --name",
    )
    parser.add_argument(
        "--only", metavar="DISTURBANCE", help="only the runs of one disturbance (e.g. shared-node)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a policy constant of TuningSpec (repeatable): how a rule is switched off for"
        " the ablation, e.g. --set max_delay_factor=1 (no flap rule)",
    )
    args = parser.parse_args()
    if args.compare:
        print(compare(*(RESULTS / f"{n}.json" for n in args.compare)))
        return
    if args.ablations:
        print(
            ablations(
                RESULTS / f"{args.name}.json", [RESULTS / f"{n}.json" for n in args.ablations]
            )
        )
        return
    setup = Setup(
        profile_path=os.path.relpath(HERE / "service_profile.json"),
        served_path=os.path.relpath(HERE / "served.json"),
        target_ms=250.0,
        peak=500.0,
        duration_s=240.0 if args.quick else 540.0,
        min_replicas=2,
        max_replicas=8,
        startup_s=10.0,
        config_delay_s=(2.0, 10.0),
        interval_s=5.0,
        scale_down_delay_s=120.0,
        seed=1,
    )
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    runs = plan(setup, seeds)
    if args.only:
        runs = [r for r in runs if r.disturbance == args.only]
    if args.set:
        runs = [r for r in runs if r.policy != "hold"]  # the constants do not move a hold
    overrides = tuple((k, float(v)) for k, v in (item.split("=", 1) for item in args.set))
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        outcomes = list(pool.map(partial(execute, setup, overrides=overrides), runs))
    elapsed = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(
        json.dumps(
            {
                "setup": asdict(setup),
                "overrides": dict(overrides),
                "outcomes": [asdict(o) for o in outcomes],
                "elapsed_s": elapsed,
            },
            indent=1,
        )
        + "\n"
    )
    for o in outcomes:
        r = o.run
        print(
            f"{r.trace:12} {r.disturbance or '-':9} {r.policy:17} seed {r.seed}:"
            f" {o.within:7.2%} within, {o.replica_seconds:5.0f} replica-s"
        )
    print(f"{len(runs)} runs in {elapsed:.0f} s -> {path}")


if __name__ == "__main__":
    main()
