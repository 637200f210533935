"""The loop simulator: virtual time, the runtime's Batcher in simulated replicas, policies."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/

from bench.loop.policies import BatchpilotPolicy, HpaPolicy, InstantPolicy, StaticPolicy
from bench.loop.simulator import (
    Cluster,
    ClusterSettings,
    ServiceProfile,
    Trace,
    VirtualTimeLoop,
    run_virtual,
    simulate,
)
from bench.loop.traces import all_traces

from batchpilot_operator.tuning import TuningSpec
from batchpilot_runtime.config import BatchingConfig

# tokenise 1 ms + 0.1 ms/item, forward 10 ms + 2 ms/item
PROFILE = ServiceProfile.linear((0.001, 0.0001), (0.010, 0.002), max_batch=64)


def const(rate: float, seconds: float) -> Trace:
    return Trace(f"const-{rate:g}", seconds, lambda _t: rate, rate)


def test_virtual_loop_jumps_to_the_next_timer() -> None:
    order: list[tuple[str, float]] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(5.0, lambda: order.append(("b", loop.time())))
        loop.call_later(2.0, lambda: order.append(("a", loop.time())))
        await asyncio.sleep(3600.0)
        return loop.time()

    assert run_virtual(main(), start=100.0) == pytest.approx(3700.0)
    assert order == [("a", 102.0), ("b", 105.0)]


def test_virtual_loop_refuses_a_deadlock() -> None:
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(RuntimeError, match="deadlock"):
            loop.run_until_complete(asyncio.Event().wait())
    finally:
        loop.close()


def test_profile_stages_and_capacity() -> None:
    assert PROFILE.tokenize_s(1) == pytest.approx(0.0011)
    assert PROFILE.forward_s(10) == pytest.approx(0.030)
    assert PROFILE.forward_s(100) == pytest.approx(0.210)  # extrapolated past 64
    assert PROFILE.capacity(10) == pytest.approx(10 / 0.030)


def test_profile_loads_the_benchmark_json(tmp_path: Path) -> None:
    sizes = list(range(1, 9))
    doc = {
        "batch_sizes": sizes,
        "tokenize_seconds": [0.001 * b for b in sizes],
        "forward_seconds": [0.01 + 0.002 * b + (0.004 if b == 5 else 0.0) for b in sizes],
    }
    path = tmp_path / "p.json"
    path.write_text(__import__("json").dumps(doc))
    raw = ServiceProfile.load(path, smooth=False)
    assert raw.forward_s(5) == pytest.approx(0.024)
    smooth = ServiceProfile.load(path)
    assert smooth.forward_s(5) < raw.forward_s(5)  # the outlier is smoothed away
    assert smooth.forward_s(8) > smooth.forward_s(1)
    doc["http_per_item_seconds"] = 0.0015
    path.write_text(__import__("json").dumps(doc))
    with_http = ServiceProfile.load(path, smooth=False)
    assert with_http.forward_s(4) == pytest.approx(raw.forward_s(4) + 4 * 0.0015)
    assert with_http.capacity(8) < raw.capacity(8)


def test_calibration_recovers_speed_and_http_cost_from_busy_time_alone() -> None:
    from bench.loop.validate import Calibration, calibrate, simulate_one, summarise

    config = BatchingConfig(max_batch_size=32, max_wait_ms=2.0)
    truth = Calibration(speed=1.2, http_per_item_s=0.002)
    real = []
    for k, rate in enumerate((40.0, 120.0, 200.0)):
        arr, lat, batch, busy = simulate_one(truth.apply(PROFILE), config, rate, 8.0, 100 + k)
        real.append(summarise(rate, arr, lat, 2.0, 8.0, batch, busy))
    assert real[2].batch_ms > real[0].batch_ms
    got = calibrate(
        PROFILE, config, real, 8.0, 2.0, http=True, speeds=(1.0, 1.2, 1.4), http_ms=(0, 2, 4)
    )
    assert got.speed == pytest.approx(1.2)
    assert got.http_per_item_s == pytest.approx(0.002)


def test_trace_arrivals_are_seeded_poisson() -> None:
    tr = const(200.0, 50.0)
    a, b = tr.arrivals(3), tr.arrivals(3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, tr.arrivals(4))
    assert abs(len(a) - 10_000) < 5 * math.sqrt(10_000)
    assert np.all(np.diff(a) >= 0)
    assert a[0] >= 0
    assert a[-1] < 50
    for t in all_traces(100.0, 120.0):
        assert max(t.rate(x) for x in np.linspace(0, 120, 500)) <= t.peak + 1e-9


def test_one_idle_replica_answers_each_request_in_its_service_time() -> None:
    # 0.5 requests/s against a 13 ms service: a request finding the model idle takes just that
    res = run_virtual(
        simulate(const(0.5, 40.0), StaticPolicy(1, BatchingConfig()), PROFILE, target_s=0.1)
    )
    assert res.requests > 10
    finished = res.arrival + res.latency
    idle = np.concatenate([[True], res.arrival[1:] >= finished[:-1]])
    assert idle.sum() > 0.8 * res.requests
    assert np.allclose(res.latency[idle], PROFILE.total_s(1))
    assert np.all(res.latency[~idle] > PROFILE.total_s(1))
    assert res.within == 1.0
    assert res.mean_batch == 1.0
    assert res.replica_seconds == pytest.approx(40.0)


def test_load_beyond_one_batch_forms_batches_and_respects_the_cap() -> None:
    cfg = BatchingConfig(max_batch_size=8, max_wait_ms=2.0)
    res = run_virtual(simulate(const(300.0, 10.0), StaticPolicy(1, cfg), PROFILE, target_s=0.1))
    assert 1.5 < res.mean_batch <= 8
    assert np.all(np.isfinite(res.latency))  # capacity at 8 is 8/26 ms = 307/s


def test_overload_builds_a_queue_and_misses_the_target() -> None:
    cfg = BatchingConfig(max_batch_size=4, max_wait_ms=0.0)  # capacity 4/18 ms = 222/s
    res = run_virtual(simulate(const(400.0, 10.0), StaticPolicy(1, cfg), PROFILE, target_s=0.1))
    assert res.within < 0.5
    assert res.mean_batch == pytest.approx(4.0, abs=0.1)
    assert max(s.queue_depth for s in res.timeline) > 100


def test_new_replicas_serve_only_after_startup_and_config_arrives_late() -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        settings = ClusterSettings(startup_s=10.0, config_delay_s=(3.0, 3.0))
        cluster = Cluster(PROFILE, BatchingConfig(generation=1), settings)
        cluster.start(1)
        cluster.scale_to(3)
        seen: dict[str, Any] = {"live": len(cluster.live()), "ready0": len(cluster.ready())}
        await asyncio.sleep(9.0)
        seen["ready9"] = len(cluster.ready())
        await asyncio.sleep(2.0)
        seen["ready11"] = len(cluster.ready())
        cluster.set_config(BatchingConfig(max_batch_size=7, generation=2))
        await asyncio.sleep(2.9)
        seen["gen_early"] = {r.config.generation for r in cluster.live()}
        await asyncio.sleep(0.2)
        seen["gen_late"] = {r.config.generation for r in cluster.live()}
        cluster.scale_to(1)
        seen["after_down"] = len(cluster.live())
        await cluster.close(loop.time())
        seen["replica_s"] = cluster.replica_seconds(loop.time())
        return seen

    seen = run_virtual(main())
    assert (seen["live"], seen["ready0"], seen["ready9"], seen["ready11"]) == (3, 1, 1, 3)
    assert seen["gen_early"] == {1}
    assert seen["gen_late"] == {2}
    assert seen["after_down"] == 1
    assert seen["replica_s"] == pytest.approx(3 * 14.1)


class FakeReplica:
    def __init__(self, queue: int) -> None:
        self.batcher = type("B", (), {"queue_depth": queue})()


class FakeCluster:
    """Just what HpaPolicy reads: ready and live replicas, and scale_to."""

    def __init__(self, queues: list[int], starting: int = 0) -> None:
        self.ready_list = [FakeReplica(q) for q in queues]
        self.starting = starting
        self.scaled: list[int] = []

    def ready(self) -> list[FakeReplica]:
        return self.ready_list

    def live(self) -> list[Any]:
        return [*self.ready_list, *([None] * self.starting)]

    def scale_to(self, n: int) -> None:
        self.scaled.append(n)


def hpa(target: float = 4.0, max_replicas: int = 20) -> HpaPolicy:
    return HpaPolicy(target, BatchingConfig(), min_replicas=1, max_replicas=max_replicas)


def sync(policy: HpaPolicy, cluster: FakeCluster, now: float) -> None:
    for t in range(int(now) - 14, int(now) + 1):
        policy.tick(cluster, float(t))  # type: ignore[arg-type]


def test_hpa_scales_by_ratio_with_tolerance() -> None:
    p = hpa()
    c = FakeCluster([8, 8])  # 8 per replica vs 4: double
    sync(p, c, 15.0)
    assert c.scaled == [4]
    p2 = hpa()
    c2 = FakeCluster([4, 4, 5])  # ratio 1.08: inside the 0.1 tolerance
    sync(p2, c2, 15.0)
    assert c2.scaled == []


def test_hpa_scale_up_rate_is_limited() -> None:
    p = hpa(max_replicas=100)
    c = FakeCluster([400, 400])  # wants 200
    sync(p, c, 15.0)
    assert c.scaled == [6]  # max(2 * 2, 2 + 4)


def test_hpa_counts_starting_pods_as_idle_for_scale_up() -> None:
    p = hpa()
    c = FakeCluster([6, 6], starting=2)  # 12 over 4 pods = 3 per pod: below target
    sync(p, c, 15.0)
    assert c.scaled == []


def test_hpa_scale_down_waits_for_the_stabilisation_window() -> None:
    p = hpa()
    c = FakeCluster([0, 0, 0, 0])
    sync(p, c, 15.0)  # the first recommendation inside the window: 1
    assert c.scaled == [1]
    p2 = hpa()
    busy = FakeCluster([4, 4, 4, 4])
    sync(p2, busy, 15.0)  # recommends 4: no change
    assert busy.scaled == []
    idle = FakeCluster([0, 0, 0, 0])
    first_down = None
    for k in range(2, 26):
        sync(p2, idle, 15.0 * k)
        if idle.scaled and first_down is None:
            first_down = 15.0 * k
    # the busy recommendation (t=15 s) holds the replicas for the 300 s window
    assert first_down == 330.0
    assert idle.scaled[0] == 1


def test_hpa_starts_with_its_start_replicas_in_the_window() -> None:
    p = HpaPolicy(4.0, BatchingConfig(), min_replicas=1, max_replicas=20, start_replicas=4)
    idle = FakeCluster([0, 0, 0, 0])
    for k in range(1, 21):  # up to 300 s: the start recommendation is still in the window
        sync(p, idle, 15.0 * k)
    assert idle.scaled == []
    sync(p, idle, 315.0)
    assert idle.scaled == [1]


def test_batchpilot_policy_follows_a_step_through_real_metrics() -> None:
    spec = TuningSpec(
        latency_target_ms=100.0,
        max_replicas=6,
        interval_s=5.0,
        scale_down_delay_s=20.0,
        max_batch_size=32,
    )
    policy = BatchpilotPolicy(spec, start_replicas=1)
    # 30/s, then 500/s (beyond one replica), then 30/s again
    trace = Trace("step", 120.0, lambda t: 500.0 if 30 <= t < 70 else 30.0, 500.0)
    settings = ClusterSettings(startup_s=2.0, config_delay_s=(0.5, 1.0))
    res = run_virtual(simulate(trace, policy, PROFILE, target_s=0.1, settings=settings))
    assert policy.decisions
    assert all(reason for _, _, reason in policy.decisions)
    peak = max(s.replicas_live for s in res.timeline if 30 <= s.time < 70)
    assert peak >= 2
    assert res.timeline[-1].replicas_live < peak  # scaled down after the step
    during = [s.replicas_live for s in res.timeline if 45 <= s.time < 70]
    assert min(during) >= 2
    late = res.latency[(res.arrival > 50) & (res.arrival < 70)]
    assert np.mean(late <= 0.1) > 0.9  # back within target once scaled
    assert res.within > 0.8


def test_instant_reference_resizes_at_once_and_pays_only_the_startup() -> None:
    rate = lambda t: 400.0 if 20 <= t < 40 else 40.0  # noqa: E731
    capacity = PROFILE.capacity(32)
    policy = InstantPolicy(rate, capacity, BatchingConfig(max_batch_size=32), 1, 8, utilization=0.5)
    trace = Trace("step", 60.0, rate, 400.0)
    settings = ClusterSettings(startup_s=3.0, config_delay_s=(0.5, 1.0))
    res = run_virtual(simulate(trace, policy, PROFILE, target_s=0.1, settings=settings))
    want = math.ceil(400.0 / (0.5 * capacity))
    assert want > 1
    # sized for the step in the first second of it, back to one replica right after it
    live = {round(s.time): s.replicas_live for s in res.timeline}
    assert (live[19], live[21], live[41]) == (1, want, 1)
    # with the pods ready 3 s later, requests after that are within target again
    late = res.latency[(res.arrival > 25) & (res.arrival < 40)]
    assert np.mean(late <= 0.1) > 0.99


def test_measured_spread_scales_each_batch() -> None:
    doubled = ServiceProfile(PROFILE.tokenize, PROFILE.forward, jitter=(2.0,))
    res = run_virtual(
        simulate(const(0.5, 40.0), StaticPolicy(1, BatchingConfig()), doubled, target_s=0.1)
    )
    finished = res.arrival + res.latency
    idle = np.concatenate([[True], res.arrival[1:] >= finished[:-1]])
    assert np.allclose(res.latency[idle], 2 * PROFILE.total_s(1))


def test_the_kept_setting_is_the_cheapest_meeting_the_share_else_the_best_share() -> None:
    from bench.loop.run import Summary, cheapest

    def run(setting: str, within: float, replica_s: float) -> Summary:
        return Summary("t", "hpa", setting, 100, within, 0.0, 0.0, replica_s, 0.0, 0, 0.0, {})

    runs = [run("a", 0.999, 900.0), run("b", 0.991, 700.0), run("c", 0.98, 400.0)]
    assert cheapest(runs, 0.99).setting == "b"
    assert cheapest(runs, 0.95).setting == "c"
    assert cheapest(runs, 0.9995).setting == "a"  # none meets it: the largest share


def test_floors_option_names_its_floors_and_refuses_bad_ones() -> None:
    from bench.loop.run import Setup, parse_floors

    setup = Setup("p.json", 250.0, 500.0, 60.0, 2, 8, 10.0, (2.0, 10.0), 5.0, 120.0, 1)
    assert parse_floors("none", setup, PROFILE) == []
    assert parse_floors("5,3,5", setup, PROFILE) == [3, 5]
    auto = parse_floors("auto", setup, PROFILE)
    assert auto[0] == 3
    assert auto[-1] == math.ceil(500.0 / PROFILE.capacity(32)) + 1
    for bad in ("2", "9", "three", ""):
        with pytest.raises(SystemExit, match="--floors"):
            parse_floors(bad, setup, PROFILE)


def test_report_names_its_own_plot_and_says_when_no_floor_was_swept(tmp_path: Path) -> None:
    from bench.loop.run import HERE, Setup, Summary, report

    profile = str(HERE / "service_profile.json")
    setup = Setup(profile, 250.0, 1200.0, 60.0, 1, 10, 10.0, (2.0, 10.0), 5.0, 120.0, 1)
    hpa = Summary("spike", "hpa", "queue/replica 1", 100, 0.99, 0.0, 0.0, 900.0, 0.0, 0, 0.0, {})
    text = report(
        setup, [hpa], {"spike": hpa}, [], 7, (16, 0.0), 1.0, tmp_path, "loop-wide", "the command"
    )
    assert "(loop-wide.png)" in text
    assert "`the command`" in text
    assert "No `minReplicas` floor swept" in text
