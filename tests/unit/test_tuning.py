"""Policy: each rule of decide() on constructed observations, asserted by the rule that fired."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from batchpilot_operator.api import Autoscaling
from batchpilot_operator.metrics import (
    Histogram,
    Observation,
    PodConfig,
    ServicePoint,
    fit_service_time,
)
from batchpilot_operator.policy import CurrentState, Decision, Regime, Rule, TuningSpec, decide
from batchpilot_operator.policy.stabilise import tapering

# t(b) = 4 ms + 2 ms * b: with a 100 ms target, an 80% budget and a 10 ms wait,
# 2*t(b) + 10 <= 80 ms -> b <= 15
FIT = fit_service_time([ServicePoint(b, 0.004 + 0.002 * b, 50) for b in (2, 8, 16, 24)])
SPEC = TuningSpec(
    latency_target_ms=100.0,
    min_replicas=1,
    max_replicas=10,
    min_batch_size=1,
    max_batch_size=64,
    min_wait_ms=0.0,
    max_wait_ms=20.0,
    interval_s=15.0,
    scale_down_delay_s=120.0,
    wait_share=0.1,  # a wait that the model has to fit in the budget
)


def latency_hist(p95_s: float, n: float = 1000.0) -> Histogram:
    """A histogram whose interpolated p95 is ``p95_s``: 95% up to p95_s, the rest above."""
    return Histogram(
        buckets=((p95_s / 2, 0.5 * n), (p95_s, 0.95 * n), (p95_s * 4, n), (math.inf, n)),
        count=n,
        sum=n * p95_s / 2,
    )


def obs(
    *,
    rate: float = 100.0,
    p95_ms: float | None = 50.0,
    samples: float = 1000.0,
    pods: int = 2,
    paired: int | None = None,
    missing: int = 0,
    queue: float = 0.0,
    batch: float = 8.0,
    util: float = 0.5,
    generation: int = 1,
    fit: Any = FIT,
) -> Observation:
    paired = pods if paired is None else paired
    lat = latency_hist(p95_ms / 1000, samples) if p95_ms is not None else None
    return Observation(
        time=1000.0,
        window_s=15.0,
        pods_expected=pods + missing,
        pods_scraped=pods,
        pods_paired=paired,
        missing={f"gone-{i}": "timed out" for i in range(missing)},
        restarted=(),
        arrival_rate=rate,
        throughput=rate,
        outcomes={"ok": rate * 15},
        queue_depth=queue,
        batches=rate * 15 / batch,
        mean_batch_size=batch,
        mean_batch_duration_s=0.004 + 0.002 * batch,
        utilization=util,
        latency=lat,
        queue_wait=None,
        latency_p50_s=None,
        latency_p95_s=lat.quantile(0.95) if lat is not None else None,
        latency_p99_s=None,
        queue_wait_p50_s=None,
        queue_wait_p95_s=None,
        service_points=(),
        service_fit=fit,
        configs={f"pod-{i}": PodConfig(8, 0.005, generation) for i in range(pods)},
    )


def state(**kw: Any) -> CurrentState:
    base: dict[str, Any] = {
        "replicas": 2,
        "max_batch_size": 8,
        "max_wait_ms": 5.0,
        "generation": 1,
    }
    base.update(kw)
    return CurrentState(**base)


def test_fixture_p95_is_what_it_says() -> None:
    o = obs(p95_ms=80.0)
    assert o.latency_p95_s == pytest.approx(0.080)


def test_no_observation_holds() -> None:
    d = decide(None, state(), SPEC, now=0.0)
    assert d.action == "hold"
    assert not d.replicas_changed
    assert not d.config_changed
    assert (d.config_rule, d.replica_rule) == (Rule.NO_METRICS, Rule.NO_METRICS)
    assert "no metrics" in d.reason  # the reason is built from the rule
    assert d.needed_replicas is None  # nothing sized
    d = decide(obs(paired=0), state(), SPEC, now=0.0)
    assert d.action == "hold"
    assert d.needed_replicas is None


def test_service_model_picks_largest_batch_meeting_target_and_sizes_replicas() -> None:
    # well inside, batches fill: additive increase (14 + 2), capped by the model at 15
    d = decide(obs(rate=100, p95_ms=30, batch=14), state(max_batch_size=14), SPEC, now=0.0)
    assert d.max_batch_size == 15
    assert d.max_wait_ms == 10.0
    assert d.config_changed
    assert d.config_rule is Rule.MODEL_CAP
    assert "caps batch at 15" in d.reason
    # capacity per replica 15 / 34 ms = 441/s; 100/s at 75% -> 1 replica would do but
    # scaling down waits for the delay
    assert d.replicas == 2
    assert d.replica_rule is Rule.DOWN_WAITING


def test_the_default_wait_is_the_specs_minimum() -> None:
    # no wait: the budget goes to the batch, 2*t(b) <= 80 ms -> b <= 18
    spec = replace(SPEC, wait_share=TuningSpec.wait_share)
    d = decide(obs(rate=100, p95_ms=30, batch=17), state(max_batch_size=17), spec, now=0.0)
    assert d.max_wait_ms == 0.0
    assert d.max_batch_size == 18
    floor = replace(spec, min_wait_ms=3.0)
    assert decide(obs(p95_ms=30), state(max_wait_ms=20.0), floor, now=0.0).max_wait_ms == 3.0
    # the wait needs no service-time model: a judged window within target is enough
    no_fit = decide(obs(p95_ms=80, fit=None), state(max_wait_ms=5.0), spec, now=0.0)
    assert no_fit.max_wait_ms == 0.0
    assert no_fit.config_changed
    assert no_fit.config_rule is Rule.WAIT_SET


def test_fast_scale_up_from_rate_and_queue() -> None:
    # 8 at 20 ms = 400/s per replica; 2000/s + 1500 queued / 15 s = 2100/s -> 2100/280 -> 8
    d = decide(obs(rate=2000, p95_ms=60, queue=1500, util=0.95), state(), SPEC, now=0.0)
    assert d.replicas == 8
    assert d.utilization_target == pytest.approx(0.7)  # p95 neither missed nor well inside
    assert d.action.startswith("scale-up")
    assert d.replica_rule is Rule.SCALE_UP
    assert Rule.SIZED_BY_MODEL in d.rules
    assert "queue 1500" in d.reason


def test_scale_up_is_capped_by_max_replicas() -> None:
    d = decide(obs(rate=50_000, p95_ms=900, util=1.0), state(), SPEC, now=0.0)
    assert d.replicas == SPEC.max_replicas


def test_multiplicative_decrease_on_a_miss_without_overload() -> None:
    # no service model: only the measured p95 speaks; the window before missed too
    cur = state(max_batch_size=20, last_miss=-SPEC.interval_s)
    d = decide(obs(p95_ms=150, util=0.5, fit=None), cur, SPEC, now=0.0)
    assert d.max_batch_size == 14  # floor(20 * 0.7)
    assert d.max_wait_ms == pytest.approx(2.5)
    assert d.regime is Regime.MISS
    assert d.config_rule is Rule.BATCH_DECREASE


def test_one_window_missing_without_overload_is_a_stall_not_a_config_problem() -> None:
    cur = state(max_batch_size=20, max_wait_ms=10.0, utilization_target=0.7)
    missed = obs(p95_ms=380, util=0.5, fit=None)
    first = decide(missed, cur, SPEC, now=0.0)
    assert (first.max_batch_size, first.max_wait_ms) == (20, 10.0)
    assert first.utilization_target == pytest.approx(0.7)
    assert first.replicas == 2
    assert first.regime is Regime.STALL
    assert first.config_rule is Rule.STALL
    # the next window within target: the stall is forgotten; a later miss starts over
    cur = first.next_state(cur, 0.0)
    inside = decide(obs(p95_ms=80, fit=None), cur, SPEC, now=SPEC.interval_s)
    cur = inside.next_state(cur, SPEC.interval_s)
    again = decide(missed, cur, SPEC, now=2 * SPEC.interval_s)
    assert (again.max_batch_size, again.utilization_target) == (20, pytest.approx(0.7))
    # two windows in a row: the batch shrinks and the headroom grows
    cur = again.next_state(cur, 2 * SPEC.interval_s)
    second = decide(missed, cur, SPEC, now=3 * SPEC.interval_s)
    assert second.max_batch_size == 14
    assert second.utilization_target == pytest.approx(0.5)


def test_a_miss_under_overload_adds_replicas_not_smaller_batches() -> None:
    d = decide(
        obs(rate=100, p95_ms=300, util=0.97, fit=None), state(max_batch_size=16), SPEC, now=0.0
    )
    assert d.max_batch_size == 16
    assert d.replicas >= 3
    assert d.regime is Regime.OVERLOAD
    assert (d.config_rule, d.replica_rule) == (Rule.BATCH_KEPT, Rule.SCALE_UP)


def test_a_starved_miss_keeps_the_batch_and_adds_a_replica_if_it_lasts() -> None:
    # p95 150 ms against 100: queue wait and batch time account for 10 + 20 ms of it, the
    # rest is the HTTP layer short of CPU (a smaller batch would only cost capacity)
    cur = state(max_batch_size=20, last_miss=-SPEC.interval_s)
    base = obs(p95_ms=150, util=0.5, fit=None, batch=8)  # mean batch time 20 ms
    starved = replace(base, queue_wait_p95_s=0.010)
    d = decide(starved, cur, SPEC, now=0.0)
    assert d.max_batch_size == 20
    assert d.replicas == 2  # one window: a stall, as likely as a shortage
    assert Rule.STARVED_ONCE in d.rules
    assert d.last_overload == 0.0  # remembered: the next windows are its tail
    again = decide(starved, d.next_state(cur, 0.0), SPEC, now=SPEC.interval_s)
    assert again.max_batch_size == 20
    assert again.replicas == 3  # it lasted: one more
    assert Rule.STARVED in again.rules
    assert Rule.OVERLOAD_STEP in again.rules
    # the same p95 spent queueing for the batcher: the batch is what is slow
    queued = replace(base, queue_wait_p95_s=0.120)
    d = decide(queued, cur, SPEC, now=0.0)
    assert d.max_batch_size == 14
    assert not {Rule.STARVED, Rule.STARVED_ONCE} & set(d.rules)


def test_additive_increase_only_when_batches_fill() -> None:
    full = decide(obs(p95_ms=30, batch=8, fit=None), state(max_batch_size=8), SPEC, now=0.0)
    assert full.max_batch_size == 10
    assert full.config_rule is Rule.BATCH_INCREASE
    sparse = decide(obs(p95_ms=30, batch=3, fit=None), state(max_batch_size=8), SPEC, now=0.0)
    assert sparse.max_batch_size == 8
    middling = decide(obs(p95_ms=80, batch=8, fit=None), state(max_batch_size=8), SPEC, now=0.0)
    assert middling.max_batch_size == 8


def test_config_not_yet_in_force_holds_the_config() -> None:
    d = decide(obs(p95_ms=150, generation=2, fit=None), state(generation=3), SPEC, now=0.0)
    assert not d.config_changed
    assert d.config_rule is Rule.CONFIG_PENDING
    assert "generation 3 not yet in force (pods report 2)" in d.reason


def test_config_pending_still_scales_up_but_never_down() -> None:
    up = decide(obs(rate=3000, util=0.95, generation=2), state(generation=3), SPEC, now=0.0)
    assert up.replicas > 2
    assert not up.config_changed
    cur = state(replicas=6, generation=3, recommendations=((-200.0, 1), (-100.0, 1)))
    down = decide(obs(rate=10, pods=6, generation=2), cur, SPEC, now=0.0)
    assert down.replicas == 6
    assert down.replica_rule is Rule.DOWN_BLOCKED
    assert "pending" in down.reason


def test_too_few_samples_holds_the_config() -> None:
    d = decide(obs(p95_ms=400, samples=5, fit=None), state(max_batch_size=20), SPEC, now=0.0)
    assert d.max_batch_size == 20
    assert not d.config_changed
    assert d.config_rule is Rule.FEW_SAMPLES


def test_missing_pods_are_assumed_loaded_and_block_scale_down() -> None:
    # 2 of 4 pods answered with 600/s: 1200/s assumed
    cur = state(replicas=4)
    d = decide(obs(rate=600, pods=2, missing=2), cur, SPEC, now=0.0)
    assert d.config_rule is Rule.PODS_UNOBSERVED
    assert "2 of 4 pods unobserved" in d.reason
    assert "arrivals 1200.0/s" in d.reason
    assert not d.config_changed
    low = replace(cur, recommendations=((-300.0, 1), (-150.0, 1)))
    d2 = decide(obs(rate=5, pods=2, missing=2), low, SPEC, now=0.0)
    assert d2.replicas == 4
    assert d2.replica_rule is Rule.DOWN_BLOCKED


def run_ticks(
    rates: list[float], cur: CurrentState, spec: TuningSpec = SPEC, start: float = 0.0
) -> tuple[list[Decision], CurrentState]:
    decisions = []
    now = start
    for r in rates:
        d = decide(obs(rate=r, pods=cur.replicas, generation=cur.generation), cur, spec, now=now)
        cur = d.next_state(cur, now)
        decisions.append(d)
        now += spec.interval_s
    return decisions, cur


def test_scale_down_waits_for_the_delay_then_steps() -> None:
    # 8 replicas, load falls to what 1 carries: nothing for 120 s, then bounded steps
    decisions, final = run_ticks([50.0] * 16, state(replicas=8))
    replicas = [d.replicas for d in decisions]
    first_down = next(i for i, d in enumerate(decisions) if d.replicas < 8)
    assert first_down * SPEC.interval_s >= SPEC.scale_down_delay_s
    steps = [a - b for a, b in zip([8, *replicas], replicas, strict=False)]
    assert max(steps) <= 2  # 25% of 8
    assert replicas == sorted(replicas, reverse=True)
    assert final.replicas < 8
    assert decisions[first_down].replica_rule is Rule.SCALE_DOWN
    # meanwhile the decisions say what the load needs, below what they keep
    assert all(d.needed_replicas == 1 for d in decisions[1:first_down])


def test_scale_down_goes_only_to_the_highest_recent_need() -> None:
    # 6 replicas; one burst at t=15 s needs 5 (no scale-up), then the load is low again
    rates = [50.0, 1400.0] + [50.0] * 14
    decisions, _ = run_ticks(rates, state(replicas=6))
    assert decisions[1].needed_replicas == 5
    assert decisions[1].replica_rule is Rule.DOWN_WAITING
    for i, d in enumerate(decisions):
        if i * SPEC.interval_s - 15.0 < SPEC.scale_down_delay_s:
            assert d.replicas >= 5, (i, d.reason)
    assert decisions[-1].replicas < 5


def test_no_scale_down_soon_after_a_scale_up() -> None:
    cur = state(
        replicas=6, last_scale_up=-30.0, recommendations=tuple((-t, 1) for t in range(0, 300, 15))
    )
    d = decide(obs(rate=10, pods=6), cur, SPEC, now=0.0)
    assert d.replicas == 6


def test_load_back_soon_after_a_scale_down_doubles_the_delay() -> None:
    # low for the delay: a scale-down; the load back 15 s later: a flap
    rates = [50.0] * 10 + [1000.0]
    decisions, cur = run_ticks(rates, state(replicas=4))
    down = next(i for i, d in enumerate(decisions) if d.replicas < 4)
    assert decisions[-1].replicas > decisions[-2].replicas
    assert Rule.FLAP in decisions[-1].rules
    assert "scale-down delay 120 -> 240 s" in decisions[-1].reason
    assert cur.scale_down_delay_s == 240.0
    # the next scale-down waits 240 s of low load, not 120
    after, cur = run_ticks([50.0] * 20, cur, start=len(rates) * SPEC.interval_s)
    first_down = next(i for i, d in enumerate(after) if d.replicas < decisions[-1].replicas)
    assert (first_down + 1) * SPEC.interval_s >= 240.0
    assert after[first_down].replica_rule is Rule.SCALE_DOWN
    assert "load low for 240 s" in after[first_down].reason
    assert down * SPEC.interval_s >= 120.0


def test_the_lengthened_delay_is_capped_and_a_late_scale_up_halves_it() -> None:
    flap = state(replicas=2, last_scale_down=-15.0, scale_down_delay_s=480.0)
    d = decide(obs(rate=1000.0, pods=2), flap, SPEC, now=0.0)
    assert d.replicas > 2
    assert d.scale_down_delay_s == 480.0  # 4x the spec's at most
    late = state(replicas=2, last_scale_down=-600.0, scale_down_delay_s=480.0)
    d = decide(obs(rate=1000.0, pods=2), late, SPEC, now=0.0)
    assert d.replicas > 2
    assert d.scale_down_delay_s == 240.0


def after_needs(needs: list[int], rate: float) -> Decision:
    """8 replicas; ``needs`` recommended every 15 s up to 15 s ago; now ``rate`` arrives."""
    times = range(-15 * len(needs), 0, 15)
    cur = state(replicas=8, recommendations=tuple(zip(times, needs, strict=True)))
    return decide(obs(rate=rate, pods=8), cur, SPEC, now=0.0)


def test_a_need_falling_steadily_is_followed_after_a_share_of_the_delay() -> None:
    # 8 -> 5 one replica at a time through the whole delay, 5 now (1300/s): a load tapering
    # off. The last 30 s (a quarter of the delay) needed 5; the step bounds it at 8 - 2.
    d = after_needs([8, 8, 8, 7, 7, 6, 6, 5, 5], rate=1300.0)
    assert d.recommendations[-1][1] == 5
    assert d.replicas == 6
    assert d.replica_rule is Rule.TAPER
    # noise on the way down that stays below where the delay began still tapers
    noisy = after_needs([8, 8, 8, 7, 8, 7, 6, 6, 5], rate=1300.0)
    assert noisy.replicas == 6
    assert noisy.replica_rule is Rule.TAPER
    # already at 6: the last 30 s is what holds it
    needs = [8, 8, 8, 7, 7, 6, 6, 6, 6]
    recent = tuple(zip(range(-135, 0, 15), needs, strict=True))
    held = decide(obs(rate=1300.0, pods=6), state(replicas=6, recommendations=recent), SPEC, 0.0)
    assert held.replicas == 6
    assert held.replica_rule is Rule.DOWN_HELD
    assert "highest need in the last 30 s is 6" in held.reason


@pytest.mark.parametrize(
    ("needs", "replicas", "why"),
    [
        ([8, 8, 8, 8, 8, 8, 8, 8, 5], 8, "a cliff: a burst or a step ended"),
        ([8, 8, 7, 8, 7, 7, 6, 6, 5], 8, "above where the delay began (7): noise, no trend"),
        ([6, 6, 6, 6, 6, 6, 6, 6, 5], 6, "one replica is no trend"),
    ],
)
def test_a_need_that_did_not_fall_steadily_waits_the_whole_delay(
    needs: list[int], replicas: int, why: str
) -> None:
    # the highest need of the whole delay (the 120 s before now), not of its last 30 s
    d = after_needs(needs, rate=1300.0)
    assert d.replicas == replicas, why
    assert Rule.TAPER not in d.rules


def test_a_steady_fall_is_relative_to_the_count() -> None:
    # 50 replicas may shed 5 a tick and still taper; 6 at once is a cliff.
    assert tapering([50, 45, 41, 37], 0.1)
    assert not tapering([50, 44, 41, 37], 0.1)
    assert tapering([3, 2, 1], 0.1)
    assert not tapering([3, 1], 0.1)
    assert tapering([10, 9, 10, 9, 8], 0.1)  # back up, never above the start
    assert not tapering([9, 10, 9, 8, 7], 0.1)  # above the start: a plateau's noise


def test_bounds_are_always_respected() -> None:
    spec = replace(
        SPEC,
        min_replicas=3,
        max_replicas=5,
        min_batch_size=4,
        max_batch_size=12,
        min_wait_ms=2.0,
        max_wait_ms=4.0,
    )
    # current config out of the (new) bounds: pulled in even while holding
    d = decide(None, state(replicas=9, max_batch_size=40, max_wait_ms=50.0), spec, now=0.0)
    assert (d.replicas, d.max_batch_size, d.max_wait_ms) == (5, 12, 4.0)
    assert d.config_rule is Rule.BOUNDS
    for o in (
        obs(rate=1, p95_ms=5, batch=12),
        obs(rate=50_000, p95_ms=900, util=1.0),
        obs(p95_ms=500, util=0.2, fit=None),
        obs(p95_ms=20, batch=12, fit=None),
    ):
        cur = state(replicas=3, max_batch_size=12, max_wait_ms=4.0, recommendations=((-500.0, 1),))
        d = decide(o, cur, spec, now=0.0)
        assert spec.min_replicas <= d.replicas <= spec.max_replicas
        assert spec.min_batch_size <= d.max_batch_size <= spec.max_batch_size
        assert spec.min_wait_ms <= d.max_wait_ms <= spec.max_wait_ms


def test_next_state_bumps_generation_only_on_config_change() -> None:
    cur = state(max_batch_size=60)
    d = decide(obs(p95_ms=30, batch=60), cur, SPEC, now=7.0)
    nxt = d.next_state(cur, 7.0)
    assert d.config_changed
    assert nxt.generation == 2
    assert nxt.last_config_change == 7.0
    assert nxt.recommendations[-1][0] == 7.0
    held = decide(None, nxt, SPEC, now=8.0)
    assert held.next_state(nxt, 8.0).generation == 2


def test_every_decision_has_a_reason() -> None:
    for o in (None, obs(), obs(p95_ms=None, samples=0), obs(missing=1), obs(generation=0)):
        assert decide(o, state(), SPEC, now=0.0).reason


def test_spec_from_the_api_and_from_the_resource_json() -> None:
    api = Autoscaling(
        enabled=True,
        min_replicas=2,
        max_replicas=7,
        latency_target_ms=250,
        min_batch_size=2,
        max_batch_size=32,
        min_wait_ms=1,
        max_wait_ms=9,
        interval_seconds=10,
        scale_down_delay_seconds=60,
    )
    spec = TuningSpec.from_autoscaling(api)
    assert (spec.min_replicas, spec.max_replicas, spec.latency_target_ms) == (2, 7, 250.0)
    assert (spec.min_batch_size, spec.max_batch_size) == (2, 32)
    assert (spec.min_wait_ms, spec.max_wait_ms) == (1.0, 9.0)
    assert (spec.interval_s, spec.scale_down_delay_s) == (10.0, 60.0)
    as_json = api.model_dump(by_alias=True)
    assert TuningSpec.from_autoscaling(as_json) == spec
    assert TuningSpec.from_autoscaling({"maxReplicas": 3}).max_replicas == 3
    assert TuningSpec.from_autoscaling(api, target_utilization=0.5).target_utilization == 0.5


def test_spec_refuses_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        TuningSpec(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError, match="min_batch_size"):
        TuningSpec(min_batch_size=9, max_batch_size=2)


def test_headroom_follows_the_measured_p95() -> None:
    cur = state(utilization_target=0.7, last_miss=-SPEC.interval_s)
    inside = decide(obs(p95_ms=20), cur, SPEC, now=0.0)
    assert inside.utilization_target == pytest.approx(0.75)
    missed = decide(obs(p95_ms=150, util=0.5), cur, SPEC, now=0.0)
    assert missed.utilization_target == pytest.approx(0.5)  # 0.49 held at the floor
    few = decide(obs(p95_ms=150, samples=3), cur, SPEC, now=0.0)
    assert few.utilization_target == pytest.approx(0.7)
    top = decide(obs(p95_ms=20), state(utilization_target=0.9), SPEC, now=0.0)
    assert top.utilization_target == pytest.approx(SPEC.max_utilization)
    low = decide(obs(p95_ms=900, util=0.5), replace(cur, utilization_target=0.5), SPEC, now=0.0)
    assert low.utilization_target == pytest.approx(SPEC.min_utilization)
    assert inside.next_state(cur, 0.0).utilization_target == pytest.approx(0.75)
    # more headroom, more replicas for the same load
    hot = decide(obs(rate=1500, p95_ms=80), state(utilization_target=0.8), SPEC, now=0.0)
    cool = decide(obs(rate=1500, p95_ms=80), state(utilization_target=0.5), SPEC, now=0.0)
    assert hot.replicas < cool.replicas


def test_a_miss_right_after_a_scale_up_is_backlog_not_batch_size() -> None:
    cur = state(max_batch_size=16, last_scale_up=-10.0)
    d = decide(obs(p95_ms=400, util=0.4), cur, SPEC, now=0.0)
    assert d.max_batch_size == 16
    assert d.regime is Regime.OVERLOAD
    assert Rule.BACKLOG in d.rules


def test_a_miss_under_overload_keeps_the_headroom_and_waits_for_a_recent_scale_up() -> None:
    # 800/s over 4 pods; the fit gives 400/s per pod at batch 8, so 3 carry it at 70% busy
    loaded = obs(rate=800, pods=4, p95_ms=400, util=0.97)
    settled = decide(loaded, state(replicas=4, utilization_target=0.7), SPEC, now=0.0)
    assert settled.replicas == 5  # saturated and missing with every pod in force: one more
    assert settled.utilization_target == pytest.approx(0.7)  # short of pods, not of headroom
    fresh = decide(
        loaded, state(replicas=4, utilization_target=0.7, last_scale_up=-10.0), SPEC, now=0.0
    )
    assert fresh.replicas == 4  # the window still holds the backlog from before they were up
    assert fresh.utilization_target == pytest.approx(0.7)


def test_no_demand_scales_down_even_when_a_replica_capacity_is_unknown() -> None:
    # batches of one item give no service-time fit; an idle model gives no busy share
    idle = replace(obs(rate=0.0, pods=2, p95_ms=None, samples=0, fit=None), utilization=None)
    cur = state(replicas=2)
    decisions = []
    for k in range(12):
        d = decide(idle, cur, SPEC, now=k * SPEC.interval_s)
        cur = d.next_state(cur, k * SPEC.interval_s)
        decisions.append(d)
    assert Rule.NO_DEMAND in decisions[0].rules
    first_down = next(i for i, d in enumerate(decisions) if d.replicas < 2)
    assert first_down * SPEC.interval_s >= SPEC.scale_down_delay_s  # the delay still holds
    assert cur.replicas == 1
    # with demand and no way to size a replica, the loop still holds
    busy = replace(obs(rate=50.0, pods=2, fit=None), utilization=None)
    assert decide(busy, state(replicas=2), SPEC, now=0.0).replicas == 2


def test_a_miss_in_the_tail_of_a_backlog_is_overload_and_is_remembered() -> None:
    cur = state(max_batch_size=16, utilization_target=0.7)
    # a deep queue: overload, seen at t=0
    deep = decide(obs(p95_ms=400, util=0.6, queue=200), cur, SPEC, now=0.0)
    assert (deep.max_batch_size, deep.utilization_target) == (16, pytest.approx(0.7))
    cur = deep.next_state(cur, 0.0)
    assert cur.last_overload == 0.0
    # the queue is paid, but the window's requests waited through it (p95 2 s): overload still,
    # neither a smaller batch, nor less headroom, nor one more replica on top
    drained = obs(p95_ms=2000, util=0.5, queue=0, pods=cur.replicas)
    tail = decide(drained, cur, SPEC, now=SPEC.interval_s)
    assert (tail.max_batch_size, tail.utilization_target) == (16, pytest.approx(0.7))
    assert tail.replicas <= cur.replicas
    assert tail.regime is Regime.OVERLOAD
    # a window plus a p95 after the overload, a miss without it (two windows in a row)
    # shrinks the batch again
    cur = replace(tail.next_state(cur, SPEC.interval_s), last_miss=35.0)
    late = decide(obs(p95_ms=400, util=0.5), cur, SPEC, now=50.0)  # scale-up 50 s ago too
    assert late.max_batch_size < 16
    assert late.regime is Regime.MISS
    # a hold (no metrics) keeps the loop's memory
    held = decide(None, cur, SPEC, now=20.0).next_state(cur, 20.0)
    assert (held.last_overload, held.utilization_target) == (0.0, cur.utilization_target)


def test_a_window_that_began_under_the_previous_config_is_not_judged() -> None:
    cur = state(max_batch_size=20, utilization_target=0.7, last_config_change=-10.0)
    missed = obs(p95_ms=150, util=0.5, fit=None)
    early = decide(missed, cur, SPEC, now=0.0)  # the window began before the change
    assert (early.max_batch_size, early.utilization_target) == (20, pytest.approx(0.7))
    assert early.config_rule is Rule.WINDOW_MIXED
    late = decide(missed, cur, SPEC, now=2 * SPEC.interval_s - 10.0)  # a whole window after
    assert late.max_batch_size == 20  # the first judged miss waits for a second
    late = decide(missed, late.next_state(cur, 20.0), SPEC, now=20.0 + SPEC.interval_s)
    assert late.max_batch_size == 14
    assert late.utilization_target == pytest.approx(0.5)


def test_without_a_fit_the_busy_share_scales_up_only_when_batches_fill_or_pods_saturate() -> None:
    # 100/s over 2 pods, 80% busy in batches of 2 of 8: the busy share says 62.5/s per pod,
    # 3 at 70% busy; but fuller batches would carry more, so no scale-up on it
    sparse = obs(rate=100, batch=2.0, util=0.8, fit=None)
    d = decide(sparse, state(replicas=2, max_batch_size=8), SPEC, now=0.0)
    assert d.replicas == 2
    assert d.replica_rule is Rule.LOWER_BOUND
    # batches of one item (a model that does not batch): the busy share is exact
    single = obs(rate=100, batch=1.0, util=0.8, fit=None)
    up = decide(single, state(replicas=2, max_batch_size=1), SPEC, now=0.0)
    assert up.replicas == 3
    # saturated pods: scale up on it whatever the batches
    hot = obs(rate=100, batch=2.0, util=0.95, fit=None)
    assert decide(hot, state(replicas=2, max_batch_size=8), SPEC, now=0.0).replicas > 2
    # and it may always lower the count: the true need is at most what it says
    quiet = obs(rate=20, pods=4, batch=2.0, util=0.1, fit=None)
    cur = state(replicas=4, max_batch_size=8, max_wait_ms=10.0)
    for k in range(10):
        d = decide(quiet, cur, SPEC, now=k * SPEC.interval_s)
        cur = d.next_state(cur, k * SPEC.interval_s)
    assert cur.replicas < 4


def test_no_extra_replica_while_the_queue_drains() -> None:
    # saturated and missing, every pod in force, but serving faster than requests arrive
    draining = replace(obs(rate=800, pods=4, p95_ms=400, util=0.97, queue=300), throughput=900.0)
    d = decide(draining, state(replicas=4, utilization_target=0.7), SPEC, now=0.0)
    # the fit gives 400/s per pod at batch 8: demand 800 + 300/30 s -> 3 at 70% busy
    assert d.replicas == 4
    assert Rule.OVERLOAD_STEP not in d.rules
    growing = replace(draining, throughput=700.0)
    assert decide(growing, state(replicas=4, utilization_target=0.7), SPEC, now=0.0).replicas == 5


def test_no_extra_replica_for_the_tail_of_a_backlog_already_paid() -> None:
    # a spike's backlog is paid: the queue is empty, the pods half busy, but this window's
    # requests waited through it, so the p95 misses, mostly outside the batcher (the queue
    # wait was counted in the window before): starved twice in a row
    tail = replace(obs(rate=100, p95_ms=1200, util=0.5, fit=None, pods=6), queue_wait_p95_s=0.01)
    cur = state(replicas=6, max_batch_size=20, last_overload=-SPEC.interval_s)
    d = decide(tail, cur, SPEC, now=0.0)
    assert Rule.STARVED in d.rules
    assert d.needed_replicas == 5  # 6 x 0.5 / 0.7 busy
    assert d.replicas == 6  # held by the scale-down delay, and no seventh on top
    assert Rule.OVERLOAD_STEP not in d.rules
    # the same miss when the demand needs every replica that runs: one more
    busy = replace(tail, utilization=0.65)  # 6 x 0.65 / 0.7 busy: all 6 needed
    d = decide(busy, cur, SPEC, now=0.0)
    assert d.replicas == 7
    assert Rule.OVERLOAD_STEP in d.rules


def test_the_measured_p95_outranks_the_model() -> None:
    # a fit inflated by a noisy neighbour (t(b) = 4 + 12*b ms: 2*t(b) <= 80 gives b <= 2,
    # 71/s per replica) while the pods answer well within target
    slow = fit_service_time([ServicePoint(b, 0.004 + 0.012 * b, 50) for b in (2, 8, 16, 24)])
    cur = state(max_batch_size=32)
    within = decide(obs(rate=200, p95_ms=70, batch=4, fit=slow), cur, SPEC, now=0.0)
    assert within.regime is Regime.WITHIN
    assert within.config_rule is Rule.MODEL_OVERRULED
    assert within.max_batch_size == 32
    slack = decide(obs(rate=200, p95_ms=20, batch=30, fit=slow), cur, SPEC, now=0.0)
    assert (slack.config_rule, slack.max_batch_size) == (Rule.MODEL_OVERRULED, 32)
    # however light the load: a fit measured under contention overstates what a cut costs
    light = decide(obs(rate=50, p95_ms=70, batch=4, fit=slow), cur, SPEC, now=0.0)
    assert (light.config_rule, light.max_batch_size) == (Rule.MODEL_OVERRULED, 32)
    # a measured miss lets the model speak whatever the load
    missed = decide(
        obs(rate=200, p95_ms=150, fit=slow), replace(cur, last_miss=-SPEC.interval_s), SPEC, 0.0
    )
    assert missed.regime is Regime.MISS
    assert (missed.config_rule, missed.max_batch_size) == (Rule.MODEL_CAP, 2)
    # within target, the model still bounds an increase
    grow = decide(obs(p95_ms=20, batch=14), state(max_batch_size=14), SPEC, now=0.0)
    assert (grow.config_rule, grow.max_batch_size) == (Rule.MODEL_CAP, 15)


def test_every_regime_is_named_by_the_rule_that_classified_it() -> None:
    cases = {
        Regime.SLACK: (obs(p95_ms=20), state()),
        Regime.WITHIN: (obs(p95_ms=80), state()),
        Regime.STALL: (obs(p95_ms=150, util=0.5), state()),
        Regime.MISS: (obs(p95_ms=150, util=0.5), state(last_miss=-SPEC.interval_s)),
        Regime.OVERLOAD: (obs(p95_ms=150, util=0.95), state()),
        Regime.UNJUDGED: (obs(p95_ms=150, samples=3), state()),
        Regime.IDLE: (obs(rate=0.0, p95_ms=None, samples=0), state()),
    }
    for regime, (o, cur) in cases.items():
        d = decide(o, cur, SPEC, now=0.0)
        assert d.regime is regime, (regime, d.rules)
        assert all(r.stage.value in {"evidence", "regime", "plan", "stabilise"} for r in d.rules)


def test_a_start_up_that_slows_the_serving_pods_is_cancelled_and_the_replicas_held() -> None:
    # 2 serving, 2 more starting; the serving pods' batches of 8 take 60 ms where the fit
    # says 20 ms: the start-ups take their compute (one node's CPU), so more replicas cannot
    # add capacity
    slowed = replace(obs(rate=1500, p95_ms=400, util=0.97), mean_batch_duration_s=0.060)
    cur = state(replicas=4, last_scale_up=-10.0, slowdown_at_scale_up=1.0)
    d = decide(slowed, cur, SPEC, now=0.0)
    assert Rule.STARTUP_STARVES in d.rules
    assert d.replica_rule is Rule.CANCEL_START
    assert d.replicas == 2  # at once: not after the scale-down delay
    assert (d.last_no_room, d.no_room_replicas) == (0.0, 2)
    # for a while the load may not push the replicas past what served, however high
    later = d.next_state(cur, 0.0)
    assert later.no_room_replicas == 2
    loaded = obs(rate=3000, p95_ms=400, util=0.97, pods=2)
    held = decide(loaded, later, SPEC, now=60.0)
    assert (held.replica_rule, held.replicas) == (Rule.NO_ROOM, 2)
    # and once the hold is over, it may try again
    free = decide(loaded, later, SPEC, now=SPEC.no_room_s + 1.0)
    assert free.replicas > 2
    assert free.no_room_replicas is None


def test_a_start_up_on_its_own_compute_is_not_cancelled() -> None:
    # the same start-ups, the serving pods' batches as fast as the fit says (20 ms at 8)
    cur = state(replicas=4, last_scale_up=-10.0, slowdown_at_scale_up=1.0)
    d = decide(obs(rate=1500, p95_ms=400, util=0.97), cur, SPEC, now=0.0)
    assert Rule.STARTUP_STARVES not in d.rules
    # a slowdown already there when the loop scaled up is not the start-up's doing
    slowed = replace(obs(rate=1500, p95_ms=400, util=0.97), mean_batch_duration_s=0.060)
    already = decide(slowed, replace(cur, slowdown_at_scale_up=3.0), SPEC, now=0.0)
    assert Rule.STARTUP_STARVES not in already.rules
    # the scale-up itself records the slowdown it was decided in
    up = decide(slowed, state(replicas=2), SPEC, now=0.0)
    assert up.replica_rule is Rule.SCALE_UP
    assert up.slowdown_at_scale_up == pytest.approx(3.0)
    assert d.replicas >= 4  # the demand's count, the starting pods kept
    assert d.no_room_replicas is None


def test_every_rule_that_fires_on_a_grid_of_windows_writes_its_reason() -> None:
    """The reason text is built from each rule's template and the values it fired with (a
    note checks them when it is made, so every test that fires a rule checks its template)."""
    fired: set[Rule] = set()
    slowed = replace(obs(rate=1500, p95_ms=400, util=0.97), mean_batch_duration_s=0.060)
    windows = [
        None,
        slowed,
        *(
            obs(rate=r, p95_ms=p, util=u, queue=q, missing=m, generation=g, fit=f, batch=b)
            for r in (0.0, 50.0, 3000.0)
            for p in (None, 20.0, 80.0, 400.0)
            for u in (0.3, 0.97)
            for q in (0.0, 500.0)
            for m in (0, 1)
            for g in (0, 1)
            for f in (FIT, None)
            for b in (1.0, 8.0)
        ),
    ]
    states = [
        state(),
        state(replicas=9, max_batch_size=200, recommendations=((-500.0, 1),)),
        state(last_miss=-SPEC.interval_s, last_overload=-SPEC.interval_s, last_scale_up=-5.0),
        state(replicas=4, last_scale_down=-30.0, slowdown_at_scale_up=1.0),
        state(last_no_room=-10.0, no_room_replicas=1, last_config_change=-5.0),
    ]
    for o in windows:
        for cur in states:
            d = decide(o, cur, SPEC, now=0.0)
            assert d.reason
            fired.update(d.rules)
    assert len(fired) >= len(Rule) - 8  # most rules fire somewhere on the grid
