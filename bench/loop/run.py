"""The control-loop benchmark: batchpilot against static and HPA baselines on load traces.

Every run drives one trace through a simulated cluster (``bench.loop.simulator``: the
runtime's own Batcher on virtual time, the service profile measured from the real model,
varied as the real server's batches varied and with its HTTP path, both as recorded in the
validation).
Per trace:

* ``batchpilot``: ``metrics.observe`` + ``policy.decide`` every ``intervalSeconds``;
* ``batchpilot-floor``: the same, with ``minReplicas`` raised to hold capacity for a jump no
  pod start-up can follow (swept, the cheapest floor holding 99% within target kept): what a
  user does for traffic known to burst;
* ``static``: the fewest fixed replicas that hold the SLO at the trace's peak rate, with the
  swept batching config that needs the fewest;
* ``hpa``: the Kubernetes HPA algorithm on queue depth per replica with static batching;
  its target and its batch config are swept and the cheapest setting meeting the SLO (p95
  within the target, i.e. at least 95% of requests within it) is kept;
* ``hpa-floor``: the same sweep with the floors of ``batchpilot-floor`` as ``minReplicas``;
* ``instant``: a reference, not a contender: it knows the trace's true rate and resizes at
  once, so what it misses is the price of the pod start-up delay alone.

Writes ``bench/results/loop.md``, ``loop.json`` and ``loop.png`` (``--name`` sets the stem).

    python -m bench.loop.run --check-sweep  # the full comparison (about 41 min on 2 cores)
    python -m bench.loop.run --quick    # shorter traces, a smaller sweep
    python -m bench.loop.run --peak 1200 --min-replicas 1 --max-replicas 10 \
        --floors none --check-sweep --name loop-wide  # a peak near maxReplicas (59 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from bench.loop import traces
from bench.loop.policies import BatchpilotPolicy, HpaPolicy, InstantPolicy, StaticPolicy
from bench.loop.simulator import (
    ClusterSettings,
    RunResult,
    ServiceProfile,
    Trace,
    run_virtual,
    simulate,
)

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator.policy import TuningSpec

HERE = Path(__file__).parent
RESULTS = HERE.parent / "results"
P95_HELD = 0.95
"""Share of requests within the target at which a run holds the SLO (its p95 within it)."""
GOAL_SHARE = 0.99
"""Share of requests within the target the issue's goal asks for on every trace."""


@dataclass(frozen=True)
class Setup:
    """Everything a run needs, picklable (worker processes rebuild traces by name)."""

    profile_path: str
    served_path: str | None
    """What the real server recorded (``bench.loop.validate --write-served``); None: the
    in-process profile's spread, no HTTP path."""
    target_ms: float
    peak: float
    duration_s: float
    min_replicas: int
    max_replicas: int
    startup_s: float
    config_delay_s: tuple[float, float]
    interval_s: float
    scale_down_delay_s: float
    seed: int

    def profile(self) -> ServiceProfile:
        served = Path(self.served_path) if self.served_path else None
        return ServiceProfile.load(Path(self.profile_path), served=served)

    def trace(self, name: str) -> Trace:
        by_name = {t.name: t for t in traces.all_traces(self.peak, self.duration_s)}
        return by_name[name]

    def spec(self) -> TuningSpec:
        return TuningSpec(
            latency_target_ms=self.target_ms,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            min_batch_size=1,
            max_batch_size=64,
            min_wait_ms=0.0,
            max_wait_ms=50.0,
            interval_s=self.interval_s,
            scale_down_delay_s=self.scale_down_delay_s,
        )


@dataclass(frozen=True)
class Job:
    trace: str
    policy: str  # batchpilot | batchpilot-floor | static | hpa | hpa-floor | instant
    replicas: int = 0  # static: the fixed count
    hpa_target: float = 0.0
    floor: int = 0  # batchpilot-floor, hpa-floor: minReplicas (0: the setup's)
    max_batch: int = 32
    wait_ms: float = 5.0
    seed: int = 0  # arrivals and service-time draws (0: the setup's)


@dataclass
class Summary:
    trace: str
    policy: str
    setting: str
    requests: int
    within: float
    p95_ms: float
    p99_ms: float
    replica_seconds: float
    mean_batch: float
    decisions: int
    wall_s: float
    series: dict[str, list[float]]
    floor: int = 0
    """batchpilot-floor, hpa-floor: the minReplicas floor of the run."""
    seed: int = 1
    """The seed of the run's arrivals and service-time draws."""


def _series(res: RunResult, step_s: float = 10.0) -> dict[str, list[float]]:
    """Windowed series for the plot: time, arrivals/s, p95 ms, replicas, max batch size."""
    end = res.timeline[-1].time + 1.0 if res.timeline else 0.0
    edges = np.arange(0.0, end + step_s, step_s)
    idx = np.searchsorted(edges, res.arrival, side="right") - 1
    t, rate, p95, repl, batch = [], [], [], [], []
    tl_t = np.asarray([s.time for s in res.timeline])
    for k in range(len(edges) - 1):
        lat = res.latency[idx == k]
        t.append(float(edges[k]))
        rate.append(len(lat) / step_s)
        fin = lat[np.isfinite(lat)]
        p95.append(
            float(np.quantile(fin, 0.95) * 1e3) if len(fin) > 0.95 * len(lat) and len(lat) else 1e5
        )
        j = int(np.searchsorted(tl_t, edges[k], side="left"))
        j = min(j, len(res.timeline) - 1)
        repl.append(float(res.timeline[j].replicas_live))
        batch.append(float(res.timeline[j].max_batch_size))
    return {"t": t, "rate": rate, "p95_ms": p95, "replicas": repl, "max_batch": batch}


def start_replicas(setup: Setup, trace: Trace, profile: ServiceProfile) -> int:
    """Where an autoscaler would stand before the trace: the replicas that carry its first
    rate at 70% busy (the same for batchpilot and HPA)."""
    need = math.ceil(trace.rate(0.0) / (0.7 * profile.capacity(16)))
    return max(setup.min_replicas, min(setup.max_replicas, need))


def run_job(setup: Setup, job: Job) -> Summary:
    profile = setup.profile()
    trace = setup.trace(job.trace)
    seed = job.seed or setup.seed
    start = start_replicas(setup, trace, profile)
    config = BatchingConfig(max_batch_size=job.max_batch, max_wait_ms=job.wait_ms)
    policy: Any
    if job.policy == "batchpilot":
        policy = BatchpilotPolicy(setup.spec(), start_replicas=start)
        setting = (
            f"interval {setup.interval_s:g} s, scale-down delay {setup.scale_down_delay_s:g} s"
        )
    elif job.policy == "batchpilot-floor":
        spec = replace(setup.spec(), min_replicas=job.floor)
        policy = BatchpilotPolicy(spec, start_replicas=max(start, job.floor))
        setting = f"minReplicas {job.floor}; otherwise as batchpilot"
    elif job.policy == "static":
        policy = StaticPolicy(job.replicas, config)
        setting = f"{job.replicas} replicas, batch {job.max_batch}, wait {job.wait_ms:g} ms"
    elif job.policy == "instant":
        busy = setup.spec().target_utilization
        policy = InstantPolicy(
            trace.rate,
            profile.capacity(job.max_batch),
            config,
            setup.min_replicas,
            setup.max_replicas,
            start_replicas=start,
            utilization=busy,
        )
        setting = (
            f"true rate, resized at once to {busy:.0%} busy;"
            f" batch {job.max_batch}, wait {job.wait_ms:g} ms"
        )
    else:
        floor = job.floor or setup.min_replicas
        policy = HpaPolicy(
            job.hpa_target,
            config,
            floor,
            setup.max_replicas,
            start_replicas=max(start, floor),
        )
        setting = (
            f"queue/replica {job.hpa_target:g}, batch {job.max_batch}, wait {job.wait_ms:g} ms"
            + (f", minReplicas {floor}" if floor != setup.min_replicas else "")
        )
    settings = ClusterSettings(
        startup_s=setup.startup_s, config_delay_s=setup.config_delay_s, seed=seed
    )
    t0 = time.perf_counter()
    res = run_virtual(
        simulate(
            trace,
            policy,
            profile,
            target_s=setup.target_ms / 1000,
            settings=settings,
            seed=seed,
        )
    )
    return Summary(
        trace=job.trace,
        policy=job.policy,
        setting=setting,
        requests=res.requests,
        within=res.within,
        p95_ms=res.quantile(0.95) * 1e3,
        p99_ms=res.quantile(0.99) * 1e3,
        replica_seconds=res.replica_seconds,
        mean_batch=res.mean_batch,
        decisions=len(res.decisions),
        wall_s=time.perf_counter() - t0,
        series=_series(res),
        floor=job.floor,
        seed=seed,
    )


def cheapest(candidates: list[Summary], share: float) -> Summary:
    """The fewest replica-seconds among the runs with at least ``share`` of the requests
    within target; if none has it, the run with the largest share."""
    ok = [r for r in candidates if r.within >= share]
    if ok:
        return min(ok, key=lambda r: r.replica_seconds)
    return max(candidates, key=lambda r: r.within)


def seed_check_jobs(
    kept: dict[str, list[Job]], seeds: list[int], sweep: list[Job] | None = None
) -> list[Job]:
    """The runs kept for each trace (batchpilot, the HPA setting kept and, with a floor
    sweep, the floors kept for both), run again at other seeds; with ``sweep``, those jobs
    too (the whole HPA sweep, for the equal-service reading at each seed)."""
    jobs = [replace(job, seed=seed) for runs in kept.values() for seed in seeds for job in runs]
    jobs += [replace(job, seed=seed) for seed in seeds for job in sweep or []]
    return list(dict.fromkeys(jobs))  # the kept HPA setting is in the sweep too


def _span(values: list[float], fmt: str) -> str:
    """``lowest-highest`` of ``values``, each formatted with ``fmt`` (one value if they
    read the same)."""
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def _pairs_by_seed(
    runs: list[Summary], name: str, first: str, second: str
) -> list[tuple[Summary, Summary]]:
    """The runs of policies ``first`` and ``second`` on trace ``name``, paired by seed."""
    by_seed: dict[int, dict[str, Summary]] = {}
    for r in runs:
        if r.trace == name and r.policy in (first, second):
            by_seed.setdefault(r.seed, {})[r.policy] = r
    return [(v[first], v[second]) for _, v in sorted(by_seed.items()) if len(v) == 2]


def _swept_at_every_seed(runs: list[Summary]) -> bool:
    """Whether ``runs`` hold more than one HPA setting at every trace and seed they ran the
    HPA at: the whole sweep, not only the setting kept."""
    settings: dict[tuple[str, int], set[str]] = {}
    for r in runs:
        if r.policy == "hpa":
            settings.setdefault((r.trace, r.seed), set()).add(r.setting)
    return bool(settings) and all(len(found) > 1 for found in settings.values())


def fmt_seed_check(runs: list[Summary], kept: dict[str, str]) -> str:
    """Per trace, how batchpilot and the HPA setting kept at the setup's seed (``kept``: its
    setting per trace) fare over all seeds run: the setting was chosen on one seed's
    arrivals, and its margin (and the goal's verdict) may not carry over to another's.
    Where ``runs`` hold the whole HPA sweep at every seed, the equal-service reading is made
    at each: batchpilot against the cheapest HPA setting with at least its share."""

    def hpa_runs(name: str, seed: int) -> list[Summary]:
        return [r for r in runs if r.trace == name and r.policy == "hpa" and r.seed == seed]

    paired = {
        name: _pairs_by_seed(
            [r for r in runs if r.policy == "batchpilot" or r.setting == kept.get(name)],
            name,
            "batchpilot",
            "hpa",
        )
        for name in dict.fromkeys(r.trace for r in runs)
    }
    swept = _swept_at_every_seed(runs)
    header = (
        "| trace | seeds | goal held (share >= HPA's, fewer replica-s) | replica-s vs HPA |"
        " batchpilot within | HPA within | HPA p95 within target |"
    )
    rule = "|---|---:|---:|---|---|---|---:|"
    if swept:
        header += " cheaper at equal service | vs the HPA at batchpilot's share, per seed |"
        rule += "---:|---|"
    lines = [header, rule]
    for name, pairs in paired.items():
        if not pairs:
            continue
        ratios = [bp.replica_seconds / hpa.replica_seconds for bp, hpa in pairs]
        held = sum(
            bp.within >= hpa.within and bp.replica_seconds < hpa.replica_seconds
            for bp, hpa in pairs
        )
        line = (
            f"| {name} | {len(pairs)} | {held} of {len(pairs)} | {_span(ratios, '{:.2f}x')} |"
            f" {_span([100 * bp.within for bp, _ in pairs], '{:.2f}%')} |"
            f" {_span([100 * hpa.within for _, hpa in pairs], '{:.2f}%')} |"
            f" {sum(hpa.within >= P95_HELD for _, hpa in pairs)} of {len(pairs)} |"
        )
        if swept:
            readings = [_equal_service(bp, hpa_runs(name, bp.seed))[1] for bp, _ in pairs]
            cheaper = sum(x is None or x < 1.0 for x in readings)
            cells = ", ".join("none reaches it" if x is None else f"{x:.2f}x" for x in readings)
            line += f" {cheaper} of {len(pairs)} | {cells} |"
        lines.append(line)
    return "\n".join(lines)


def _equal_service(bp: Summary, hpa_runs: list[Summary]) -> tuple[Summary, float | None]:
    """The cheapest of ``hpa_runs`` with at least batchpilot's share within target (else the
    one with the largest share), and batchpilot's replica-seconds over its own: the cost at
    equal service (None when no HPA setting reaches that share)."""
    hpa = cheapest(hpa_runs, bp.within)
    if hpa.within < bp.within:
        return hpa, None
    return hpa, bp.replica_seconds / hpa.replica_seconds


def fmt_floor_seed_check(runs: list[Summary]) -> str:
    """Per trace, the floors kept at the setup's seed (batchpilot's and the HPA's) over all
    seeds run: at how many seeds batchpilot's floor holds 99% within target, and how both
    compare."""
    lines = [
        "| trace | seeds | batchpilot-floor >= 99% | batchpilot-floor within |"
        " HPA-floor within | share >= HPA-floor's | replica-s vs HPA-floor |",
        "|---|---:|---:|---|---|---:|---|",
    ]
    for name in dict.fromkeys(r.trace for r in runs):
        pairs = _pairs_by_seed(runs, name, "batchpilot-floor", "hpa-floor")
        if not pairs:
            continue
        n = len(pairs)
        lines.append(
            f"| {name} | {n} | {sum(bp.within >= GOAL_SHARE for bp, _ in pairs)} of {n} |"
            f" {_span([100 * bp.within for bp, _ in pairs], '{:.2f}%')} |"
            f" {_span([100 * hpa.within for _, hpa in pairs], '{:.2f}%')} |"
            f" {sum(bp.within >= hpa.within for bp, hpa in pairs)} of {n} |"
            f" {_span([bp.replica_seconds / h.replica_seconds for bp, h in pairs], '{:.2f}x')} |"
        )
    return "\n".join(lines)


def _run_all(setup: Setup, jobs: list[Job], workers: int) -> list[Summary]:
    if workers <= 1:
        return [run_job(setup, j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(run_job, [setup] * len(jobs), jobs))


def static_replicas(setup: Setup, max_batch: int, wait_ms: float) -> int:
    """The fewest fixed replicas that hold 99% within target for two minutes at the peak."""
    profile = setup.profile()
    per = profile.capacity(max_batch)
    first = max(1, math.ceil(setup.peak / per))
    candidates = list(range(first, first + 4))
    out = {}
    for n in candidates:
        trace = Trace("peak", 120.0, lambda _t: setup.peak, setup.peak)
        res = run_virtual(
            simulate(
                trace,
                StaticPolicy(n, BatchingConfig(max_batch_size=max_batch, max_wait_ms=wait_ms)),
                profile,
                target_s=setup.target_ms / 1000,
                seed=setup.seed,
            )
        )
        out[n] = res.within
        if res.within >= GOAL_SHARE:
            return n
    return candidates[-1]


def _ms(value: float) -> str:
    return "refused/timed out" if math.isinf(value) else f"{value:.0f}"


def fmt_table(rows: list[Summary], hpa_best: dict[str, Summary]) -> str:
    lines = [
        "| trace | policy | setting | within target | p95 ms | p99 ms | replica-s | vs HPA |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = hpa_best.get(r.trace)
        ratio = f"{r.replica_seconds / base.replica_seconds:.2f}x" if base else "-"
        lines.append(
            f"| {r.trace} | {r.policy} | {r.setting} | {100 * r.within:.2f}% | {_ms(r.p95_ms)} |"
            f" {_ms(r.p99_ms)} | {r.replica_seconds:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def plot(rows: list[Summary], path: Path, target_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.trace for r in rows))
    fig, axes = plt.subplots(4, len(names), figsize=(4.2 * len(names), 10), sharex="col")
    colors = {
        "batchpilot": "tab:blue",
        "hpa": "tab:orange",
        "hpa-floor": "tab:brown",
        "static": "tab:gray",
        "instant": "tab:green",
        "batchpilot-floor": "tab:purple",
    }
    for c, name in enumerate(names):
        for r in (r for r in rows if r.trace == name):
            s = r.series
            col = colors[r.policy]
            if r.policy == "batchpilot":
                axes[0, c].plot(s["t"], s["rate"], color="black", lw=1)
                axes[3, c].step(s["t"], s["max_batch"], where="post", color=col)
            axes[1, c].step(s["t"], s["replicas"], where="post", color=col, label=r.policy)
            axes[2, c].plot(s["t"], np.minimum(s["p95_ms"], 5000), color=col, lw=1)
        axes[2, c].axhline(target_ms, color="red", ls="--", lw=0.8)
        axes[2, c].set_yscale("log")
        axes[0, c].set_title(name)
        axes[3, c].set_xlabel("time (s)")
    axes[0, 0].set_ylabel("requests/s")
    axes[1, 0].set_ylabel("replicas")
    axes[2, 0].set_ylabel("p95 per 10 s (ms)")
    axes[3, 0].set_ylabel("batchpilot max batch")
    axes[1, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short traces, a small sweep")
    parser.add_argument("--profile", type=Path, default=HERE / "service_profile.json")
    parser.add_argument(
        "--served",
        default=str(HERE / "served.json"),
        help="what the real server recorded (bench.loop.validate --write-served): its spread"
        " of service times, in order, and the HTTP path; 'none' for the in-process spread",
    )
    parser.add_argument("--target-ms", type=float, default=250.0)
    parser.add_argument("--peak", type=float, default=500.0)
    parser.add_argument("--min-replicas", type=int, default=2)
    parser.add_argument("--max-replicas", type=int, default=8)
    parser.add_argument("--startup-s", type=float, default=10.0)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--scale-down-delay-s", type=float, default=120.0)
    parser.add_argument(
        "--floors",
        default="auto",
        help="minReplicas floors for batchpilot-floor and hpa-floor: 'auto' (from one above"
        " --min-replicas to one above the replicas that carry the peak), 'none', or a"
        " comma-separated list",
    )
    parser.add_argument(
        "--check-seeds",
        default="2,3,4",
        help="seeds at which batchpilot, each trace's kept HPA setting and the floors kept run"
        " again (comma-separated; 'none' to skip)",
    )
    parser.add_argument(
        "--check-sweep",
        action="store_true",
        help="at each --check-seeds seed, run the whole HPA sweep again (not only the kept"
        " setting), to read batchpilot at equal service at every seed",
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="loop", help="file stem of the results")
    args = parser.parse_args()
    setup = Setup(
        profile_path=os.path.relpath(args.profile),
        served_path=None if args.served == "none" else os.path.relpath(args.served),
        target_ms=args.target_ms,
        peak=args.peak,
        duration_s=240.0 if args.quick else 540.0,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        startup_s=args.startup_s,
        config_delay_s=(2.0, 10.0),
        interval_s=args.interval_s,
        scale_down_delay_s=args.scale_down_delay_s,
        seed=1,
    )
    names = [t.name for t in traces.all_traces(setup.peak, setup.duration_s)]
    check_seeds = parse_seeds(args.check_seeds, setup.seed)
    # No wait, as batchpilot runs by default: on this profile a wait only adds latency.
    batch_configs = [(8, 0.0), (16, 0.0)] if args.quick else [(8, 0.0), (16, 0.0), (32, 0.0)]
    targets = [2.0, 8.0] if args.quick else [1.0, 2.0, 4.0, 8.0]
    started = time.perf_counter()
    # Floors above minReplicas hold capacity for a jump no pod start-up can follow; both
    # autoscalers get them, up to the replicas that carry the peak.
    floors = parse_floors(args.floors, setup, setup.profile())
    jobs = [Job(n, "batchpilot") for n in names]
    jobs += [Job(n, "batchpilot-floor", floor=f) for n in names for f in floors]
    jobs += [
        Job(n, "hpa" if f == setup.min_replicas else "hpa-floor", hpa_target=t, max_batch=b,
            wait_ms=w, floor=f)
        for n in names
        for b, w in batch_configs
        for t in targets
        for f in [setup.min_replicas, *floors]
    ]  # fmt: skip
    results = _run_all(setup, jobs, args.workers)

    def best(policy: str, share: float) -> dict[str, Summary]:
        runs = [r for r in results if r.policy == policy]
        return {n: cheapest([r for r in runs if r.trace == n], share) for n in names}

    hpa_best = best("hpa", P95_HELD)
    hpa_floor_best = best("hpa-floor", P95_HELD) if floors else {}
    floor_best = best("batchpilot-floor", GOAL_SHARE) if floors else {}
    # static: sized for the peak, with the batching config that needs the fewest replicas
    n_static, b, w = min((static_replicas(setup, b, w), b, w) for b, w in batch_configs)
    job_of = {id(r): j for j, r in zip(jobs, results, strict=True)}
    kept = {n: [Job(n, "batchpilot"), job_of[id(hpa_best[n])]] for n in names}
    if floors:
        for n in names:
            kept[n] += [job_of[id(floor_best[n])], job_of[id(hpa_floor_best[n])]]
    others = _run_all(
        setup,
        [Job(n, "static", replicas=n_static, max_batch=b, wait_ms=w) for n in names]
        + [Job(n, "instant", max_batch=b, wait_ms=w) for n in names]
        + seed_check_jobs(
            kept, check_seeds, [j for j in jobs if j.policy == "hpa"] if args.check_sweep else []
        ),
        args.workers,
    )
    seeded = [r for r in others if r.seed != setup.seed]
    others = [r for r in others if r.seed == setup.seed]
    rows = []
    for n in names:
        rows += [r for r in results if r.trace == n and r.policy == "batchpilot"]
        rows += [hpa_best[n]]
        rows += [r for r in others if r.trace == n]
        if floors:
            rows += [floor_best[n], hpa_floor_best[n]]
    sweep = [r for r in results if r.policy in ("hpa", "hpa-floor", "batchpilot-floor")]
    elapsed = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    table = fmt_table(rows, hpa_best)
    (args.out / f"{args.name}.json").write_text(
        json.dumps(
            {
                "setup": asdict(setup),
                "rows": [{k: v for k, v in asdict(r).items() if k != "series"} for r in rows],
                "sweeps": [{k: v for k, v in asdict(r).items() if k != "series"} for r in sweep],
                "seed_checks": [
                    {k: v for k, v in asdict(r).items() if k != "series"} for r in seeded
                ],
                "elapsed_s": elapsed,
            },
            indent=2,
        )
        + "\n"
    )
    plot(rows, args.out / f"{args.name}.png", setup.target_ms)
    print(table)
    print(f"\n{len(results) + len(others) + len(seeded)} runs in {elapsed:.0f} s")
    (args.out / f"{args.name}.md").write_text(
        report(
            setup,
            rows,
            hpa_best,
            sweep,
            n_static,
            (b, w),
            elapsed,
            args.out,
            args.name,
            " ".join(["python -m bench.loop.run", *sys.argv[1:]]),
            seeded,
        )
    )


def parse_seeds(text: str, own: int) -> list[int]:
    """The ``--check-seeds`` option: 'none', or distinct positive seeds other than the
    setup's ``own`` (whose runs are the main results)."""
    if text == "none":
        return []
    try:
        seeds = sorted({int(s) for s in text.split(",")})
    except ValueError:
        raise SystemExit(f"--check-seeds {text}: expected 'none' or integers like 2,3") from None
    if seeds[0] < 1 or own in seeds:
        raise SystemExit(
            f"--check-seeds {text}: each seed must be positive and not the main runs' {own}"
        )
    return seeds


def parse_floors(text: str, setup: Setup, profile: ServiceProfile) -> list[int]:
    """The ``--floors`` option: 'auto' is every floor from one above ``min_replicas`` to one
    above the replicas that carry the peak at full batches; 'none' is no floor sweep."""
    if text == "none":
        return []
    if text == "auto":
        n_peak = math.ceil(setup.peak / profile.capacity(32))
        return list(range(setup.min_replicas + 1, max(setup.min_replicas + 1, n_peak + 1) + 1))
    try:
        floors = sorted({int(f) for f in text.split(",")})
    except ValueError:
        raise SystemExit(f"--floors {text}: expected 'auto', 'none' or integers like 3,5") from None
    if floors[0] <= setup.min_replicas or floors[-1] > setup.max_replicas:
        raise SystemExit(
            f"--floors {text}: each floor must be above --min-replicas {setup.min_replicas}"
            f" and at most --max-replicas {setup.max_replicas}"
        )
    return floors


def _p95_per_rate(ms_by_rate: dict[str, float]) -> str:
    """``4.8 ms at 30/s, 5.0 ms at 60/s``: a p95 per request rate, in the given order."""
    return ", ".join(f"{ms:.1f} ms at {rate}/s" for rate, ms in ms_by_rate.items())


def _spread_line(profile: dict[str, Any], served_path: str | None) -> str:
    """How the setup's simulated batch times vary, from the profile's and the served JSON."""
    if served_path is None:
        p99 = float(np.quantile(profile["jitter"], 0.99))
        return (
            "each batch scaled by a ratio drawn from the in-process profile's spread"
            f" (median 1, p99 {p99:.2f})."
        )
    served = json.loads(Path(served_path).read_text())
    jitter, http = served["jitter"], np.asarray(served["http_path_seconds"]) * 1e3
    by_rate = served.get("http_path_by_rate", {})
    drawn = (
        " drawn from the recording at the request rate nearest to what its replica received"
        " over the last 2 s (p95 "
        + _p95_per_rate(
            {
                rate: 1e3 * float(np.quantile(times, 0.95))
                for rate, times in sorted(by_rate.items(), key=lambda kv: float(kv[0]))
            }
        )
        + f"; all rates pooled: p50 {float(np.median(http)):.1f} ms)."
        if by_rate
        else f" drawn from the distribution recorded there (p50 {float(np.median(http)):.1f} ms,"
        f" p95 {float(np.quantile(http, 0.95)):.1f} ms)."
    )
    return (
        f"each batch scaled by a ratio replayed in order, from a random point per replica, from"
        f" what the real server recorded in the validation (`{served_path}`: {len(jitter)}"
        f" batches, over their median: p95 {float(np.quantile(jitter, 0.95)):.2f}, p99"
        f" {float(np.quantile(jitter, 0.99)):.2f}); each request adds an HTTP path{drawn}"
    )


def _validation_table(path: Path) -> str:
    if not path.exists():
        return f"(no `{path.name}`: run `python -m bench.loop.validate`)"
    data = json.loads(path.read_text())
    held = data["calibration"]
    by_rate = held.get("http_path_ms_p95_by_rate", {})
    http = (
        f", each request adding an HTTP path (its latency at the client beyond its time in the"
        f" batcher) drawn from the other rounds' {held['requests']}"
        + (
            " at its rate (p95 " + _p95_per_rate(by_rate) + ")"
            if by_rate
            else f" (p50 {held['http_path_ms_p50']:.1f} ms, p95 {held['http_path_ms_p95']:.1f} ms)"
        )
        if held.get("requests")
        else ""
    )
    lines = [
        f"Against: {data['against']} ({data.get('threads', '?')} torch thread"
        f"{', on a core of its own' if data.get('server_on_own_core') else ''}); batching "
        f"{data['config']['maxBatchSize']} / {data['config']['maxWaitMs']} ms; machine load "
        f"average {data.get('loadavg', '?')}. Real: the round with the median p95 of those run"
        " (same arrivals each round; their range shows the machine's own spread). Simulated:"
        " the compared round's own batches' service times over the profile's, replayed in"
        f" step with its arrivals{http}. From other rounds: the service times too come from"
        f" {held['source']} ({held['batches']} batches, median x{held['ratio_p50']:.2f}, p95"
        f" x{held['ratio_p95']:.2f}), replayed from a random point. No latency of a compared"
        " round is used.",
        "",
        "| rate/s | real tput/s | sim tput/s | diff | real p95 ms (rounds) | sim p95 ms | diff |"
        " from other rounds | without the HTTP path | profile alone |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        re, si = r["real"], r["simulated"]
        spread = [m["p95_ms"] for m in r["real_rounds"]]
        lines.append(
            f"| {r['rate']:g} | {re['throughput']:.1f} | {si['throughput']:.1f} |"
            f" {r['throughput_diff_pct']:+.1f}% | {re['p95_ms']:.0f}"
            f" ({min(spread):.0f}-{max(spread):.0f}) | {si['p95_ms']:.0f} |"
            f" {r['p95_diff_pct']:+.1f}% | {r['held_out']['p95_diff_pct']:+.1f}% |"
            f" {r['service_times_only']['p95_diff_pct']:+.1f}% |"
            f" {r['model_only']['p95_diff_pct']:+.1f}% |"
        )
    return "\n".join(lines)


def _at_equal_share(bp: Summary, hpa_runs: list[Summary]) -> str:
    """batchpilot's replica-seconds over those of the cheapest HPA setting of the sweep that
    answers at least batchpilot's share within target: the cost at equal service."""
    if not hpa_runs:
        return "-"
    hpa, ratio = _equal_service(bp, hpa_runs)
    if ratio is None:
        return f"no HPA setting reaches it (best {100 * hpa.within:.2f}%)"
    return (
        f"{ratio:.2f}x ({hpa.setting}: {100 * hpa.within:.2f}%, {hpa.replica_seconds:.0f}"
        " replica-s)"
    )


def report(
    setup: Setup,
    rows: list[Summary],
    hpa_best: dict[str, Summary],
    sweep: list[Summary],
    n_static: int,
    static_cfg: tuple[int, float],
    elapsed: float,
    out: Path,
    stem: str = "loop",
    command: str = "python -m bench.loop.run",
    seeded: list[Summary] | None = None,
) -> str:
    profile = json.loads(Path(setup.profile_path).read_text())
    fit = profile["fit"]

    def row(name: str, policy: str) -> Summary | None:
        return next((r for r in rows if r.trace == name and r.policy == policy), None)

    def pct(r: Summary | None) -> str:
        return f"{100 * r.within:.2f}%" if r else "-"

    verdict = [
        "| trace | batchpilot within | HPA within | instant within | replica-s vs HPA |"
        " >= HPA share | <= 0.8x | >= 99% | vs the HPA at batchpilot's share |",
        "|---|---:|---:|---:|---:|:---:|:---:|:---:|---|",
    ]
    hpa_runs = [r for r in sweep if r.policy == "hpa"]
    floored = [
        "| trace | batchpilot-floor | within | HPA-floor | within | replica-s vs HPA-floor |"
        " vs static |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for name, base in hpa_best.items():
        bp, instant = row(name, "batchpilot"), row(name, "instant")
        if bp is None:
            continue
        ratio = bp.replica_seconds / base.replica_seconds
        verdict.append(
            f"| {name} | {pct(bp)} | {pct(base)} | {pct(instant)} | {ratio:.2f}x |"
            f" {'yes' if bp.within >= base.within else 'no'} |"
            f" {'yes' if ratio <= 0.8 else 'no'} | {'yes' if bp.within >= GOAL_SHARE else 'no'} |"
            f" {_at_equal_share(bp, [r for r in hpa_runs if r.trace == name])} |"
        )
        bf, hf, st = row(name, "batchpilot-floor"), row(name, "hpa-floor"), row(name, "static")
        if bf and hf and st:
            floored.append(
                f"| {name} | minReplicas {bf.floor} | {pct(bf)} | {hf.setting} | {pct(hf)} |"
                f" {bf.replica_seconds / hf.replica_seconds:.2f}x |"
                f" {bf.replica_seconds / st.replica_seconds:.2f}x |"
            )
    floors = sorted({r.floor for r in sweep if r.policy == "batchpilot-floor"})
    floor_setup = (
        f"""- batchpilot-floor: the same loop with `minReplicas` raised (swept over {floors};
  the cheapest floor with 99% within target kept, else the best share): capacity held for a
  jump that no pod start-up can follow, which is what a user sets for traffic known to
  burst. The HPA gets the same floors (hpa-floor: its sweep at each floor).
"""
        if floors
        else ""
    )
    over_seeds = (
        [r for r in rows if r.policy == "batchpilot"]
        + [r for r in sweep if r.policy == "hpa"]
        + (seeded or [])
    )
    seed_results = (
        f"The HPA setting kept was chosen on seed {setup.seed}'s arrivals and service-time"
        " draws. Run again with the same setting at other seeds (batchpilot too), over all"
        " seeds run"
        + (
            "; the whole HPA sweep ran at each seed too (`--check-sweep`), for the"
            " equal-service reading there"
            if _swept_at_every_seed(over_seeds)
            else ""
        )
        + ":\n\n"
        + fmt_seed_check(over_seeds, {n: r.setting for n, r in hpa_best.items()})
        if seeded
        else "No other seed run (`--check-seeds none`)."
    )
    floor_results = (
        "With a floor held for bursts (both autoscalers' `minReplicas` swept):\n\n"
        + "\n".join(floored)
        if floors
        else "No `minReplicas` floor swept in this run (`--floors none`)."
    )
    floor_seeds = fmt_floor_seed_check(
        [r for r in rows if r.policy in ("batchpilot-floor", "hpa-floor")] + (seeded or [])
    )
    if floors and seeded and len(floor_seeds.splitlines()) > 2:
        floor_results += (
            f"\n\nThe floors kept were chosen on seed {setup.seed} too. Run again at the other"
            f" seeds, over all seeds run:\n\n{floor_seeds}"
        )
    sweep_rows = "\n".join(
        f"| {r.trace} | {r.policy} | {r.setting} | {100 * r.within:.2f}% |"
        f" {r.replica_seconds:.0f} |"
        for r in sorted(sweep, key=lambda r: (r.trace, r.policy, r.setting))
    )
    return f"""# Control loop: batchpilot against static batching and the HPA

Produced by `{command}` ({elapsed:.0f} s on this machine); the validation by
`python -m bench.loop.validate`; the service profile by `python -m bench.loop.profile`.

## Setup

- Simulator: every replica runs the runtime's own `Batcher` (and `Telemetry`) on a
  virtual-time event loop; the model is a two-stage (tokenise, forward) sleep whose times are
  the profile measured from the runtime's model class on this machine
  (all-MiniLM-L6-v2, {profile["torch_threads"]} torch thread, two batches in flight):
  t(b) = {fit["intercept_seconds"] * 1e3:.1f} ms + {fit["per_item_seconds"] * 1e3:.2f} ms x b,
  {_spread_line(profile, setup.served_path)}
- Cluster: requests spread at random over ready replicas; a new replica is ready
  {setup.startup_s:g} s after it is created; a new ConfigMap reaches each replica after
  {setup.config_delay_s[0]:g} to {setup.config_delay_s[1]:g} s; removed replicas drain.
- Target: {setup.target_ms:g} ms per request (the SLO: p95 within it); replicas
  {setup.min_replicas}..{setup.max_replicas}; traces of {setup.duration_s:g} s with a peak of
  {setup.peak:g} requests/s, Poisson arrivals (seed {setup.seed}). Autoscalers start at the
  replicas that carry the trace's first rate.
- batchpilot: `metrics.observe` on the replicas' `/metrics` text and `policy.decide` every
  {setup.interval_s:g} s, scale-down delay {setup.scale_down_delay_s:g} s, batch size 1..64,
  wait 0..50 ms.
- HPA: the Kubernetes algorithm (15 s sync, tolerance 0.1, scale-up by at most max(100%, 4
  pods) per period, pods not ready count as idle for scale-up, 300 s scale-down
  stabilisation whose window starts with the start replicas, as after a steady spell at
  the first rate) on the mean queue depth per ready replica; target and batch config swept
  per trace, the cheapest setting with p95 within the target kept (sweep below).
{floor_setup}- Static: {n_static} fixed replicas, the fewest that hold 99% within target at the
  peak, with the swept batching config that needs the fewest (batch {static_cfg[0]}, wait
  {static_cfg[1]:g} ms).
- Instant (a reference, not a contender): the same batch config; every second it reads the
  trace's true rate and at once resizes to {setup.spec().target_utilization:.0%} busy, down as
  fast as up. No autoscaler reacts sooner, so what it misses is what the pod start-up delay
  costs without standing headroom.

## Validation (one replica, real runtime vs simulator)

{_validation_table(out / "loop.validation.json")}

In-process (the runtime's Batcher and model class on the real clock, no HTTP):

{_validation_table(out / "loop.validation-inprocess.json")}

## Results

{fmt_table(rows, hpa_best)}

Goal per trace (batchpilot against the strongest HPA setting: the cheapest that holds the
p95 within the target; the last column reads the same sweep at equal service instead, the
cheapest HPA setting with at least batchpilot's share within target):

{chr(10).join(verdict)}

{seed_results}

{floor_results}

![load, replicas, p95 and batch size over time]({stem}.png)

## What the simulator leaves out

- It models the dispatch (the runtime's own Batcher), the model's two stages with the spread
  the server showed, the HTTP path as recorded per request, the Service, pod start-up and
  ConfigMap propagation. What it replays was recorded at one replica, from light load to
  near saturation (batches of 1 to about 30). Each request's HTTP path is drawn from the
  recording at the rate nearest its replica's, but the service times are pooled over all
  rates (a replica with room replays the saturated rounds' slow spells too) and keep the
  profile's speed (normalised to their median); no interference between pods sharing a node
  is modelled.
- No reactive policy absorbs an instantaneous multiple of the load within a pod's start-up
  delay without standing headroom: the step, the bursts and the spike cost every autoscaler
  the requests that arrive before new pods are ready. The instant reference measures that
  price: where it stays under 99%, the 99% goal needs capacity held for the jump (a higher
  `minReplicas`, the batchpilot-floor rows), not a faster loop.

## Sweeps (the HPA's target and batching; batchpilot's floor)

| trace | policy | setting | within target | replica-s |
|---|---|---|---:|---:|
{sweep_rows}
"""


if __name__ == "__main__":
    main()
