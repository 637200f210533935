"""The cluster-against-simulator benchmark's pure parts: traces, profile, accounting, report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/

from bench.loop import cluster_report
from bench.loop.on_cluster import (
    PodTimes,
    Watch,
    _chains,
    _replica_seconds,
    compressed_traces,
    simulator_profile,
    static_replicas,
)

from batchpilot_localcluster.loadgen import LoadReport, Outcome
from batchpilot_localcluster.scenario import ScenarioResult
from batchpilot_runtime.backends.emulated import load_profile


def test_compressed_traces_keep_the_shapes_proportions() -> None:
    step, diurnal, bursts, spike = compressed_traces(300, 180)
    assert [t.duration_s for t in (step, diurnal, bursts, spike)] == [180] * 4
    assert (step.rate(10), step.rate(90), step.rate(170)) == (75, 300, 75)
    assert diurnal.rate(90) == pytest.approx(300)
    # on/off: 60 s on and 120 s off in 900 s become 12 and 24 in 180 s.
    assert (bursts.rate(23), bursts.rate(25)) == (30, 300)
    assert (spike.rate(89), spike.rate(92), spike.rate(100)) == (100, 300, 100)


def test_the_simulator_gets_the_emulated_profile_and_spread() -> None:
    profile = load_profile("bert-large-l4")
    sim = simulator_profile(profile, seed=3, draws=1000)
    assert sim.forward_s(8) == pytest.approx(profile.batch_seconds(8))
    assert sim.tokenize_s(8) == 0.0
    assert len(sim.jitter) == 1000
    assert sim.jitter_in_order
    assert 0.8 < min(sim.jitter) < 1.0 < max(sim.jitter) < 1.25  # sigma 0.04
    assert static_replicas(profile, 300) == 3  # 139/s per replica at 80% busy


def test_replica_seconds_count_pods_within_the_load() -> None:
    seen = Watch(
        pods={
            "a": PodTimes("a", created=-5.0),  # before the load: counted from 0
            "b": PodTimes("b", created=10.0, gone=40.0),
            "c": PodTimes("c", created=50.0),
        }
    )
    assert _replica_seconds(seen, 60.0) == pytest.approx(60 + 30 + 10)


def test_the_scale_up_chain_runs_from_the_deployment_write() -> None:
    seen = Watch(
        pods={
            "old": PodTimes("old", created=0.0, ip="127.0.0.2", ready=0.0),
            "new": PodTimes(
                "new", created=10.5, ip="127.0.0.3", scheduled=10.75, running=11.0, ready=20.0
            ),
        },
        scaled=[(0.0, 1), (10.0, 2)],
    )
    load = LoadReport(
        [
            Outcome(19.0, 0.01, 200, "http://127.0.0.2:8080"),
            Outcome(21.0, 0.02, 200, "http://127.0.0.3:8080"),
            Outcome(20.5, 0.01, 429, "http://127.0.0.3:8080"),
            Outcome(2.0, 0.01, 200, "http://127.0.0.3:8080"),  # an earlier pod, same address
        ]
    )
    (chain,) = _chains(seen, ScenarioResult(load))
    assert chain == pytest.approx(
        {
            "pod_object": 0.5,
            "scheduled": 0.75,
            "process_running": 1.0,
            "ready": 10.0,
            "first_request_served": 11.02,
        }
    )


def test_the_report_judges_each_pair_against_the_goal() -> None:
    def run(where: str, within: float, replica_s: float) -> dict[str, object]:
        return {
            "trace": "step-4x",
            "policy": "batchpilot",
            "where": where,
            "within": within,
            "p95_ms": 80.0,
            "replica_seconds": replica_s,
            "replicas": [],
            "chain": [{"pod_object": 0.2, "ready": 9.0}] if where == "cluster" else [],
        }

    near = cluster_report.comparison_table([run("cluster", 0.95, 400), run("simulator", 0.97, 410)])
    far = cluster_report.comparison_table([run("cluster", 0.95, 400), run("simulator", 0.97, 440)])
    assert near[-1].endswith("| yes |")
    assert "(+2.0)" in near[-1]
    assert far[-1].endswith("| no |")
    assert "(+10.0%)" in far[-1]
    chain = cluster_report.chain_table([run("cluster", 0.95, 400)])
    assert any(row.startswith("| ready | 9.00 |") for row in chain)
