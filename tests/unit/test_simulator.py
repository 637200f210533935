"""The loop simulator: virtual time, the runtime's Batcher in simulated replicas, policies."""

from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/

from bench.loop.policies import BatchpilotPolicy, HpaPolicy, InstantPolicy, StaticPolicy
from bench.loop.run import Summary
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

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator.policy import TuningSpec

# tokenise 1 ms + 0.1 ms/item, forward 10 ms + 2 ms/item
PROFILE = ServiceProfile.linear((0.001, 0.0001), (0.010, 0.002), max_batch=64)


def const(rate: float, seconds: float) -> Trace:
    return Trace(f"const-{rate:g}", seconds, lambda _t: rate, rate)


def summary(
    policy: str,
    within: float,
    replica_s: float,
    *,
    setting: str = "s",
    seed: int = 1,
    trace: str = "step",
) -> Summary:
    """A benchmark run's summary with only what the report's readings use."""
    return Summary(
        trace, policy, setting, 100, within, 0.0, 0.0, replica_s, 0.0, 0, 0.0, {}, seed=seed
    )


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
    assert raw.jitter == ()
    doc["jitter"] = [0.9, 1.1]
    path.write_text(__import__("json").dumps(doc))
    in_process = ServiceProfile.load(path)
    assert in_process.jitter == (0.9, 1.1)
    assert not in_process.jitter_in_order
    assert in_process.http_path_s == ()
    recorded = tmp_path / "served.json"
    recorded.write_text(
        __import__("json").dumps(
            {
                "jitter": [1.3, 1.0, 1.6],
                "jitter_in_order": True,
                "http_path_seconds": [0.002, 0.009],
                "http_path_by_rate": {"90": [0.009], "30": [0.002]},
            }
        )
    )
    served = ServiceProfile.load(path, served=recorded)
    assert served.jitter == (1.3, 1.0, 1.6)
    assert served.jitter_in_order
    assert served.http_path_s == (0.002, 0.009)
    assert served.http_path_by_rate == ((30.0, (0.002,)), (90.0, (0.009,)))
    assert served.forward_s(5) == smooth.forward_s(5)  # the stages stay the profile's


def test_a_recorded_spread_is_replayed_in_order_from_a_random_point() -> None:
    import random
    from dataclasses import replace

    from bench.loop.simulator import SimulatedModel

    from batchpilot_runtime.batcher import Batch

    recorded = (1.0, 2.0, 3.0, 4.0, 5.0)
    profile = replace(PROFILE, jitter=recorded, jitter_in_order=True)

    async def durations(model: SimulatedModel) -> list[float]:
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(7):
            t0 = loop.time()
            await model.run(Batch("embed", [None]))
            out.append(round((loop.time() - t0) / PROFILE.total_s(1), 9))
        return out

    seen = [run_virtual(durations(SimulatedModel(profile, random.Random(s)))) for s in range(6)]
    for got in seen:
        start = recorded.index(got[0])
        assert got == [recorded[(start + i) % 5] for i in range(7)]
    assert len({got[0] for got in seen}) > 1  # replicas start at different points
    drawn = run_virtual(durations(SimulatedModel(replace(profile, jitter_in_order=False))))
    assert set(drawn) <= set(recorded)
    assert all(drawn != [recorded[(s + i) % 5] for i in range(7)] for s in range(5))
    in_step = replace(profile, jitter_offset=0)
    for s in range(3):
        assert run_virtual(durations(SimulatedModel(in_step, random.Random(s))))[:5] == list(
            recorded
        )


def test_calibration_replays_the_recorded_spread_of_service_times() -> None:
    from bench.loop.validate import Calibration, simulate_one, summarise

    # Recorded batches that took 1.5x the profile's time, and a few 3x outliers.
    batches = [(b, 1.5 * PROFILE.tokenize_s(b), 1.5 * PROFILE.forward_s(b)) for b in (1, 2, 4)]
    batches += [(3, 3 * PROFILE.tokenize_s(3), 3 * PROFILE.forward_s(3))]
    cal = Calibration.from_batches(PROFILE, batches * 5, "test")
    assert cal.ratios[:4] == pytest.approx((1.5, 1.5, 1.5, 3.0))  # in the order recorded
    assert cal.quantile(0.5) == pytest.approx(1.5)
    assert max(cal.ratios) == pytest.approx(3.0)
    assert cal.summary()["batches"] == 20

    config = BatchingConfig(max_batch_size=32, max_wait_ms=2.0)
    plain = simulate_one(PROFILE, config, 40.0, 20.0, 1)
    slow = simulate_one(cal.apply(PROFILE), config, 40.0, 20.0, 1)
    plain_m = summarise(40.0, plain[0], plain[1], 2.0, 20.0, plain[2], plain[3])
    slow_m = summarise(40.0, slow[0], slow[1], 2.0, 20.0, slow[2], slow[3])
    # Busy time per batch grows with the ratios (a little more: slower batches grow larger)
    assert slow_m.batch_ms / plain_m.batch_ms == pytest.approx(1.8, rel=0.15)
    assert slow_m.p95_ms > 1.5 * plain_m.p95_ms
    with pytest.raises(ValueError, match="no batches recorded in nowhere"):
        Calibration.from_batches(PROFILE, [], "nowhere")


def test_the_http_path_is_the_client_latency_beyond_the_batcher() -> None:
    from argparse import Namespace
    from dataclasses import replace

    from bench.loop.validate import Calibration, http_path, simulate_one

    arrival = np.array([0.5, 1.0, 2.0, 3.0, 9.5])
    latency = np.array([0.030, 0.040, np.inf, 0.050, 0.020])
    in_batcher = {"0": 0.010, "1": 0.031, "3": 0.044, "4": 0.001}
    window = Namespace(warmup=0.8, seconds=9.0)
    # request 0 arrived before the window, 2 was not answered, 4 after the window
    assert http_path(arrival, latency, in_batcher, window) == pytest.approx([0.009, 0.006])
    assert http_path(arrival, latency, {}, window).size == 0

    cal = Calibration.from_batches(PROFILE, [(1, 0.001, 0.012)], "test", {20.0: [0.006, 0.002]})
    assert cal.http_path_s == (0.002, 0.006)
    assert cal.http_path_by_rate == ((20.0, (0.002, 0.006)),)
    assert cal.summary()["http_path_ms_p95"] == pytest.approx(5.8)
    # Every simulated request gets one draw of the HTTP path on top of its time in the batcher
    config = BatchingConfig(max_batch_size=32, max_wait_ms=2.0)
    with_http = simulate_one(cal.apply(PROFILE), config, 20.0, 10.0, 1)[1]
    no_http = replace(cal.apply(PROFILE), http_path_s=(), http_path_by_rate=())
    bare = simulate_one(no_http, config, 20.0, 10.0, 1)[1]
    added = np.round(with_http - bare, 9)
    assert set(added) == {0.002, 0.006}


def test_a_request_draws_the_http_path_recorded_nearest_its_replicas_rate() -> None:
    from dataclasses import replace

    from bench.loop.validate import Calibration, simulate_one

    recorded = {30.0: [0.001], 150.0: [0.050]}
    cal = Calibration.from_batches(PROFILE, [(1, 0.001, 0.012)], "test", recorded)
    assert cal.http_path_s == (0.001, 0.050)  # pooled, for the summary
    profile = cal.apply(PROFILE)
    assert profile.http_path_at(20.0) == (0.001,)
    assert profile.http_path_at(100.0) == (0.050,)  # nearer 150 than 30
    assert profile.http_path_at(900.0) == (0.050,)
    config = BatchingConfig(max_batch_size=32, max_wait_ms=2.0)
    bare = replace(profile, http_path_s=(), http_path_by_rate=())

    def added(rate: float) -> np.ndarray:
        with_http = simulate_one(profile, config, rate, 10.0, 1)[1]
        return np.round(with_http - simulate_one(bare, config, rate, 10.0, 1)[1], 9)

    # a replica's rate is counted over its last two seconds: after the first, one recording
    assert set(added(25.0)[50:]) == {0.001}
    assert set(added(140.0)[300:]) == {0.050}


def test_held_out_rounds_exclude_the_compared_ones() -> None:
    from bench.loop.validate import held_out

    rounds: list[list[Any]] = [[None, None, None], [None, None, None]]
    assert held_out(rounds, [1, 0]) == [(0, 0), (1, 1), (0, 2), (1, 2)]  # in the order run
    # one round per rate: nothing is held out, the compared rounds calibrate
    assert held_out([[None], [None]], [0, 0]) == [(0, 0), (1, 0)]


def test_request_recorder_times_each_identified_request(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from bench.loop.recorded_server import Record, read_requests, record_requests

    class Runtime:
        async def infer(
            self, request: Any, kind: str, texts: list[str], priority: int
        ) -> list[str]:
            await asyncio.sleep(0.01)
            return texts

    record = tmp_path / "record"
    with Record(record) as rec:
        record_requests(Runtime, rec)

        async def both() -> list[list[str]]:
            named = SimpleNamespace(headers={"x-request-id": "7"})
            anonymous = SimpleNamespace(headers={})
            return list(
                await asyncio.gather(
                    Runtime().infer(named, "k", ["a"], 0), Runtime().infer(anonymous, "k", ["b"], 0)
                )
            )

        assert asyncio.run(both()) == [["a"], ["b"]]
    times = read_requests(record)
    assert list(times) == ["7"]  # a request without the header is not recorded
    assert 0.009 < times["7"] < 1.0


def test_stage_recorder_writes_each_batch_once_with_both_stages(tmp_path: Path) -> None:
    from bench.loop.recorded_server import Record, line_count, read_stages, record_stages

    class Model:
        def _tokenize(self, texts: list[str]) -> dict[str, Any]:
            return {"input_ids": np.zeros((len(texts), 7))}

        def _forward(self, enc: dict[str, Any], _kind: object) -> list[int]:
            return list(range(enc["input_ids"].shape[0]))

    record = tmp_path / "stages"
    assert line_count(record) == 0
    with Record(record) as rec:
        record_stages(Model, rec)
        m = Model()
        assert m._forward(m._tokenize(["a", "b", "c"]), None) == [0, 1, 2]
        assert line_count(record) == 1
        # A later batch overtaking an earlier one between the stages keeps its own times
        first, second = m._tokenize(["d"]), m._tokenize(["e", "f"])
        m._forward(second, None)
        m._forward(first, None)
        # A forward pass of an encoding not tokenised here (the memory probe) is no batch
        m._forward({"input_ids": np.zeros((4, 7))}, None)
    batches = read_stages(record)
    assert [b for b, _, _ in batches] == [3, 2, 1]
    assert all(t >= 0 and f >= 0 for _, t, f in batches)
    assert read_stages(record, skip_lines=1) == batches[1:]
    record.write_text("batch 3 0.001 0.010\nreq 7 0.02\n")
    assert read_stages(record) == [(3, 0.001, 0.010)]


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


def test_a_retired_replica_holds_its_device_for_the_stop_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        cluster = Cluster(PROFILE, BatchingConfig(), ClusterSettings(stop_s=5.0))
        cluster.start(2)
        await asyncio.sleep(10.0)
        cluster.scale_to(1)  # the idle replica drains at once, then stops 5 s later
        await asyncio.sleep(20.0)
        seconds = cluster.replica_seconds(loop.time())
        await cluster.close(loop.time())  # the live replica's batcher stops with the loop
        return seconds

    assert run_virtual(main()) == pytest.approx(30 + 15)


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
    from bench.loop.run import cheapest

    def run(setting: str, within: float, replica_s: float) -> Summary:
        return summary("hpa", within, replica_s, setting=setting)

    runs = [run("a", 0.999, 900.0), run("b", 0.991, 700.0), run("c", 0.98, 400.0)]
    assert cheapest(runs, 0.99).setting == "b"
    assert cheapest(runs, 0.95).setting == "c"
    assert cheapest(runs, 0.9995).setting == "a"  # none meets it: the largest share


def test_the_cost_at_equal_service_is_against_the_cheapest_hpa_with_batchpilots_share() -> None:
    from bench.loop.run import _at_equal_share

    def run(policy: str, setting: str, within: float, replica_s: float) -> Summary:
        return summary(policy, within, replica_s, setting=setting)

    hpa = [
        run("hpa", "a", 0.999, 900.0),
        run("hpa", "b", 0.991, 700.0),
        run("hpa", "c", 0.9, 400.0),
    ]
    assert _at_equal_share(run("batchpilot", "bp", 0.995, 450.0), hpa).startswith("0.50x (a:")
    assert _at_equal_share(run("batchpilot", "bp", 0.95, 350.0), hpa).startswith("0.50x (b:")
    assert "best 99.90%" in _at_equal_share(run("batchpilot", "bp", 0.9995, 350.0), hpa)


def test_floors_option_names_its_floors_and_refuses_bad_ones() -> None:
    from bench.loop.run import Setup, parse_floors

    setup = Setup("p.json", None, 250.0, 500.0, 60.0, 2, 8, 10.0, (2.0, 10.0), 5.0, 120.0, 1)
    assert parse_floors("none", setup, PROFILE) == []
    assert parse_floors("5,3,5", setup, PROFILE) == [3, 5]
    auto = parse_floors("auto", setup, PROFILE)
    assert auto[0] == 3
    assert auto[-1] == math.ceil(500.0 / PROFILE.capacity(32)) + 1
    for bad in ("2", "9", "three", ""):
        with pytest.raises(SystemExit, match="--floors"):
            parse_floors(bad, setup, PROFILE)


def test_report_names_its_own_plot_and_says_when_no_floor_was_swept(tmp_path: Path) -> None:
    from bench.loop.run import HERE, Setup, report

    profile = str(HERE / "service_profile.json")
    setup = Setup(profile, None, 250.0, 1200.0, 60.0, 1, 10, 10.0, (2.0, 10.0), 5.0, 120.0, 1)
    hpa = summary("hpa", 0.99, 900.0, setting="queue/replica 1", trace="spike")
    text = report(
        setup, [hpa], {"spike": hpa}, [], 7, (16, 0.0), 1.0, tmp_path, "loop-wide", "the command"
    )
    assert "(loop-wide.png)" in text
    assert "`the command`" in text
    assert "No `minReplicas` floor swept" in text


def test_seed_check_reruns_the_kept_runs_at_each_seed() -> None:
    from bench.loop.run import Job, seed_check_jobs

    kept = {
        "step": [
            Job("step", "batchpilot"),
            Job("step", "hpa", hpa_target=2.0, max_batch=16, wait_ms=0.0),
            Job("step", "batchpilot-floor", floor=4),
        ]
    }
    jobs = seed_check_jobs(kept, [2, 3])
    assert [(j.policy, j.seed) for j in jobs] == [
        ("batchpilot", 2),
        ("hpa", 2),
        ("batchpilot-floor", 2),
        ("batchpilot", 3),
        ("hpa", 3),
        ("batchpilot-floor", 3),
    ]
    assert all(j.hpa_target == 2.0 and j.max_batch == 16 for j in jobs if j.policy == "hpa")
    assert all(j.floor == 4 for j in jobs if j.policy == "batchpilot-floor")


def test_seed_check_counts_the_seeds_where_the_goal_holds() -> None:
    from bench.loop.run import fmt_seed_check

    def run(policy: str, seed: int, within: float, replica_s: float) -> Summary:
        return summary(policy, within, replica_s, seed=seed)

    runs = [
        run("batchpilot", 1, 0.97, 800.0),
        run("hpa", 1, 0.96, 1000.0),  # held: more share, fewer replica-s
        run("batchpilot", 2, 0.95, 800.0),
        run("hpa", 2, 0.96, 1000.0),  # not: less share
        run("batchpilot", 3, 0.99, 1100.0),
        run("hpa", 3, 0.94, 1000.0),  # not: more replica-s; the HPA misses its p95 here
    ]
    row = fmt_seed_check(runs, {"step": "s"}).splitlines()[-1]
    assert row == "| step | 3 | 1 of 3 | 0.80x-1.10x | 95.00%-99.00% | 94.00%-96.00% | 2 of 3 |"


def test_seed_check_reads_equal_service_at_each_seed_given_the_whole_sweep() -> None:
    from bench.loop.run import Job, fmt_seed_check, seed_check_jobs

    kept = Job("step", "hpa", hpa_target=2.0, max_batch=16, wait_ms=0.0)
    other = replace(kept, hpa_target=1.0)
    jobs = seed_check_jobs({"step": [Job("step", "batchpilot"), kept]}, [2], [kept, other])
    assert [(j.policy, j.hpa_target, j.seed) for j in jobs] == [
        ("batchpilot", 0.0, 2),
        ("hpa", 2.0, 2),  # once, though both lists hold it
        ("hpa", 1.0, 2),
    ]

    def run(policy: str, setting: str, seed: int, within: float, replica_s: float) -> Summary:
        return summary(policy, within, replica_s, setting=setting, seed=seed)

    runs = [
        run("batchpilot", "bp", 1, 0.97, 800.0),
        run("hpa", "a", 1, 0.96, 1000.0),
        run("hpa", "b", 1, 0.98, 1200.0),  # the cheapest with batchpilot's share: 0.67x
        run("batchpilot", "bp", 2, 0.99, 900.0),
        run("hpa", "a", 2, 0.95, 1000.0),
        run("hpa", "b", 2, 0.98, 1200.0),  # no setting reaches 99%
        run("batchpilot", "bp", 3, 0.96, 1100.0),
        run("hpa", "a", 3, 0.97, 1000.0),  # the cheapest with 96%: batchpilot costs 1.10x
        run("hpa", "b", 3, 0.98, 1050.0),
    ]
    row = fmt_seed_check(runs, {"step": "a"}).splitlines()[-1]
    assert row == (
        "| step | 3 | 2 of 3 | 0.80x-1.10x | 96.00%-99.00% | 95.00%-97.00% | 3 of 3 |"
        " 2 of 3 | 0.67x, none reaches it, 1.10x |"
    )
    # without the sweep at every seed, no equal-service reading
    assert (
        fmt_seed_check(runs[:6] + runs[6:8], {"step": "a"}).splitlines()[-1].endswith("| 3 of 3 |")
    )


def test_floor_seed_check_counts_the_seeds_at_99_percent() -> None:
    from bench.loop.run import fmt_floor_seed_check, fmt_seed_check

    def run(policy: str, seed: int, within: float, replica_s: float) -> Summary:
        return summary(policy, within, replica_s, seed=seed, trace="spike")

    runs = [
        run("batchpilot-floor", 1, 0.995, 900.0),
        run("hpa-floor", 1, 0.98, 1000.0),
        run("batchpilot-floor", 2, 0.985, 1100.0),  # under 99%, less than the HPA's share
        run("hpa-floor", 2, 0.99, 1000.0),
        run("batchpilot", 1, 0.9, 500.0),  # not a floor: left out
        run("hpa", 1, 0.95, 800.0),
    ]
    rows = fmt_floor_seed_check(runs).splitlines()
    assert rows[-1] == (
        "| spike | 2 | 1 of 2 | 98.50%-99.50% | 98.00%-99.00% | 1 of 2 | 0.90x-1.10x |"
    )
    # the floors stay out of the unfloored table, and one seed reads as one value, not a range
    assert (
        fmt_seed_check(runs, {"spike": "s"})
        .splitlines()[-1]
        .startswith("| spike | 1 | 0 of 1 | 0.62x | 90.00% | 95.00% |")
    )


def test_check_seeds_option_refuses_the_main_seed_and_bad_values() -> None:
    from bench.loop.run import parse_seeds

    assert parse_seeds("none", 1) == []
    assert parse_seeds("4,2,4", 1) == [2, 4]
    for bad in ("1,2", "0", "two", ""):
        with pytest.raises(SystemExit, match="--check-seeds"):
            parse_seeds(bad, 1)
