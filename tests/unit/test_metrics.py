"""Observation: parsing the runtime's metrics, deltas between scrapes, quantiles, scraping."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from fakepods import FakePod, scrape_of

from batchpilot_contract.batching import BatchingConfig
from batchpilot_contract.metrics import BATCH_SIZE, REQUEST_DURATION_SECONDS
from batchpilot_operator.metrics import (
    Histogram,
    MetricsParseError,
    ServiceHistory,
    ServicePoint,
    fit_service_time,
    fraction_at_most,
    histogram_quantile,
    observe,
    parse_metrics,
    scrape_pods,
    sum_histograms,
)
from batchpilot_runtime.telemetry import Telemetry


def test_parse_reads_every_contract_metric() -> None:
    pod = FakePod(max_batch_size=24, max_wait_s=0.004, gen=3)
    pod.queue.set(5)
    pod.serve(40, latency_s=0.03, batch_size=8, batch_s=0.02)
    pod.requests.labels("rejected").inc(2)
    s = parse_metrics(pod.text(), pod="p", at=1.0)
    assert s.queue_depth == 5
    assert s.requests == {"ok": 40, "rejected": 2}
    assert s.histograms[REQUEST_DURATION_SECONDS].count == 40
    assert s.histograms[BATCH_SIZE].sum == 40
    assert s.histograms[REQUEST_DURATION_SECONDS].buckets[-1] == (math.inf, 40)
    assert s.config.max_batch_size == 24
    assert s.config.max_wait_s == pytest.approx(0.004)
    assert s.config.generation == 3


def test_parse_refuses_text_without_batchpilot_metrics() -> None:
    with pytest.raises(MetricsParseError, match="batchpilot_queue_depth"):
        parse_metrics("some_other_metric 1\n", pod="p", at=0.0)
    with pytest.raises(MetricsParseError, match="not Prometheus text"):
        parse_metrics("this is { not metrics\n", pod="p", at=0.0)


def test_histogram_quantile_interpolates_like_promql() -> None:
    # 100 observations: 50 in (0, 0.1], 40 in (0.1, 0.2], 10 in (0.2, 0.4]
    buckets = [(0.1, 50.0), (0.2, 90.0), (0.4, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.3)
    # in the +Inf bucket: the highest finite bound
    assert histogram_quantile(0.99, [(0.1, 50.0), (math.inf, 100.0)]) == pytest.approx(0.1)
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3.0)]) is None  # no +Inf bucket
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, buckets)


def test_fraction_at_most_inverts_the_quantile() -> None:
    buckets = [(0.1, 50.0), (0.2, 90.0), (0.4, 100.0), (math.inf, 100.0)]
    assert fraction_at_most(0.15, buckets) == pytest.approx(0.7)
    assert fraction_at_most(0.05, buckets) == pytest.approx(0.25)
    assert fraction_at_most(1.0, buckets) == pytest.approx(1.0)
    for q in (0.1, 0.5, 0.8, 0.95):
        value = histogram_quantile(q, buckets)
        assert value is not None
        assert fraction_at_most(value, buckets) == pytest.approx(q)


def test_sum_histograms_adds_bucket_by_bucket() -> None:
    a = Histogram(((0.1, 1.0), (0.2, 3.0), (math.inf, 4.0)), 4.0, 0.5)
    b = Histogram(((0.1, 2.0), (0.2, 2.0), (math.inf, 6.0)), 6.0, 1.5)
    total = sum_histograms([a, b])
    assert total is not None
    assert total.buckets == ((0.1, 3.0), (0.2, 5.0), (math.inf, 10.0))
    assert (total.count, total.sum) == (10.0, 2.0)
    assert sum_histograms([]) is None


def test_observe_takes_deltas_over_the_window_and_sums_pods() -> None:
    a, b = FakePod(), FakePod()
    a.serve(100, latency_s=0.2, batch_size=10, batch_s=0.05)  # before the window
    first = scrape_of(0.0, {"a": a, "b": b})
    a.serve(100, latency_s=0.03, batch_size=10, batch_s=0.02)
    b.serve(300, latency_s=0.07, batch_size=20, batch_s=0.04)
    b.requests.labels("timeout").inc(4)
    b.queue.set(6)
    obs = observe(first, scrape_of(10.0, {"a": a, "b": b}))
    assert obs.window_s == 10.0
    assert (obs.pods_expected, obs.pods_scraped, obs.pods_paired) == (2, 2, 2)
    assert obs.complete
    assert obs.outcomes == {"ok": 400, "timeout": 4}
    assert obs.throughput == pytest.approx(40.0)
    # answered 404 plus 6 more waiting than before
    assert obs.arrival_rate == pytest.approx(41.0)
    assert obs.queue_depth == 6
    assert obs.batches == 25
    assert obs.mean_batch_size == pytest.approx(16.0)
    assert obs.mean_batch_duration_s == pytest.approx((10 * 0.02 + 15 * 0.04) / 25)
    # busy share: a 10*0.02 s, b 15*0.04 s of 10 s
    assert obs.utilization == pytest.approx((0.02 + 0.06) / 2)
    # the early 0.2 s latencies are outside the window: 100 at 0.03 and 300 at 0.07
    assert obs.latency_samples == 400
    assert obs.latency_p95_s is not None
    assert 0.05 < obs.latency_p95_s <= 0.1
    assert obs.latency_p50_s is not None
    assert 0.05 < obs.latency_p50_s <= 0.1
    assert obs.fraction_within(0.05) == pytest.approx(0.25)
    assert {p.batch_size for p in obs.service_points} == {10.0, 20.0}


def test_restarted_pod_counts_its_counters_since_the_restart() -> None:
    old = FakePod()
    old.serve(1000, latency_s=0.03, batch_size=10, batch_s=0.02)
    first = scrape_of(0.0, {"a": old})
    fresh = FakePod()  # same pod name, process restarted: counters from zero
    fresh.serve(50, latency_s=0.03, batch_size=10, batch_s=0.02)
    obs = observe(first, scrape_of(5.0, {"a": fresh}))
    assert obs.restarted == ("a",)
    assert obs.outcomes == {"ok": 50}
    assert obs.throughput == pytest.approx(10.0)
    assert obs.latency_samples == 50


def test_missing_pod_is_missing_not_zero_load() -> None:
    a, b = FakePod(), FakePod()
    first = scrape_of(0.0, {"a": a, "b": b})
    a.serve(100, latency_s=0.03, batch_size=10, batch_s=0.02)
    obs = observe(first, scrape_of(10.0, {"a": a}, missing={"b": "timed out after 2s"}))
    assert obs.pods_expected == 2
    assert obs.pods_scraped == 1
    assert obs.pods_paired == 1
    assert obs.pods_missing == 1
    assert obs.missing == {"b": "timed out after 2s"}
    assert not obs.complete


def test_first_scrape_has_no_baseline_and_new_pods_count_from_zero() -> None:
    a = FakePod()
    a.serve(100, latency_s=0.03, batch_size=10, batch_s=0.02)
    a.queue.set(3)
    obs = observe(None, scrape_of(0.0, {"a": a}))
    assert obs.pods_paired == 0
    assert obs.arrival_rate == 0.0
    assert obs.queue_depth == 3  # the gauge needs no baseline
    assert not obs.complete
    before = scrape_of(0.0, {"a": a})
    b = FakePod()  # became ready within the window: all its counts are the window's
    b.serve(50, latency_s=0.03, batch_size=10, batch_s=0.02)
    obs2 = observe(before, scrape_of(5.0, {"a": a, "b": b}))
    assert (obs2.pods_paired, obs2.pods_expected) == (2, 2)
    assert obs2.new == ("b",)
    assert obs2.outcomes == {"ok": 50}
    assert obs2.complete


def test_pod_missing_at_the_previous_scrape_has_no_baseline() -> None:
    a, b = FakePod(), FakePod()
    b.serve(5000, latency_s=0.03, batch_size=10, batch_s=0.02)  # long-running
    before = scrape_of(0.0, {"a": a}, missing={"b": "timed out"})
    a.serve(100, latency_s=0.03, batch_size=10, batch_s=0.02)
    obs = observe(before, scrape_of(10.0, {"a": a, "b": b}))
    assert (obs.pods_paired, obs.pods_expected) == (1, 2)
    assert obs.outcomes == {"ok": 100}  # b's 5000 are not counted as this window's
    assert not obs.complete


def test_configs_in_force_and_oldest_generation() -> None:
    pods = {"a": FakePod(max_batch_size=8, gen=4), "b": FakePod(max_batch_size=16, gen=5)}
    obs = observe(None, scrape_of(0.0, pods))
    assert obs.configs["a"].max_batch_size == 8
    assert obs.configs["b"].generation == 5
    assert obs.min_config_generation == 4


def test_fit_service_time_recovers_a_line() -> None:
    pts = [ServicePoint(b, 0.004 + 0.002 * b, batches=10) for b in (2, 5, 9, 14, 30)]
    fit = fit_service_time(pts)
    assert fit is not None
    assert fit.intercept_s == pytest.approx(0.004)
    assert fit.per_item_s == pytest.approx(0.002)
    assert fit.duration(10) == pytest.approx(0.024)
    assert fit.throughput(10) == pytest.approx(10 / 0.024)
    assert fit.size_range == (2, 30)


def test_fit_service_time_refuses_too_little_or_flat_data() -> None:
    assert fit_service_time([ServicePoint(4, 0.01, 5), ServicePoint(8, 0.02, 5)]) is None
    same = [ServicePoint(8.0 + 0.1 * i, 0.02, 5) for i in range(5)]
    assert fit_service_time(same) is None  # sizes span 0.4 items: the slope would be noise
    three = [ServicePoint(b, 0.004 + 0.002 * b, 5) for b in (2, 8, 16)]
    assert fit_service_time(three) is None  # too few points
    falling = [ServicePoint(b, 0.05 - 0.001 * b, 5) for b in (2, 4, 8, 16)]
    assert fit_service_time(falling) is None


def test_observe_fits_the_service_profile_over_history() -> None:
    history = [ServicePoint(b, 0.005 + 0.001 * b, 20) for b in (4, 8, 12)]
    a = FakePod()
    first = scrape_of(0.0, {"a": a})
    a.serve(320, latency_s=0.05, batch_size=32, batch_s=0.037)
    obs = observe(first, scrape_of(10.0, {"a": a}), history=history)
    assert obs.service_fit is not None
    assert obs.service_fit.per_item_s == pytest.approx(0.001)
    assert obs.service_fit.intercept_s == pytest.approx(0.005)


async def test_scrape_pods_concurrently_records_failures() -> None:
    pod = FakePod()
    pod.serve(10, latency_s=0.03, batch_size=5, batch_s=0.02)
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        host = request.url.host
        if host == "127.0.0.3":
            raise httpx.ConnectError("connection refused", request=request)
        if host == "127.0.0.4":
            return httpx.Response(503, text="not ready")
        if host == "127.0.0.5":
            await asyncio.Event().wait()  # never answers
        if host == "127.0.0.6":
            return httpx.Response(200, text="<html>not metrics</html>")
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return httpx.Response(200, text=pod.text())

    targets = {f"p{i}": f"http://127.0.0.{i}:8000/metrics" for i in range(1, 7)}
    targets |= {f"q{i}": f"http://127.0.0.{i}:8000/metrics" for i in (1, 2)}
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        scrape = await scrape_pods(targets, timeout_s=0.05, concurrency=2, client=client)
    assert set(scrape.samples) == {"p1", "p2", "q1", "q2"}
    assert scrape.samples["p1"].requests == {"ok": 10}
    assert set(scrape.missing) == {"p3", "p4", "p5", "p6"}
    assert "ConnectError" in scrape.missing["p3"]
    assert scrape.missing["p4"] == "HTTP 503"
    assert "timed out" in scrape.missing["p5"]
    assert "batchpilot_queue_depth" in scrape.missing["p6"] or "Prometheus" in scrape.missing["p6"]
    assert scrape.pods == frozenset(targets)
    assert peak <= 2


async def test_scrape_pods_refuses_zero_concurrency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        await scrape_pods({}, concurrency=0)


def test_parses_what_the_runtime_telemetry_serves() -> None:
    cfg = BatchingConfig(max_batch_size=12, max_wait_ms=4.0, generation=5)
    t = Telemetry(queue_depth=lambda: 3, config=lambda: cfg)
    for _ in range(3):
        t.batch_started([0.001, 0.002])
        t.batch_finished(2, 0.01)
        t.request_done("ok", 0.02)
        t.request_done("ok", 0.03)
    t.request_done("rejected")
    s = parse_metrics(t.render().decode(), pod="p", at=0.0)
    assert s.queue_depth == 3
    assert s.requests["ok"] == 6
    assert s.requests["rejected"] == 1
    assert s.histograms[REQUEST_DURATION_SECONDS].count == 6
    assert s.histograms[BATCH_SIZE].sum == 6
    assert (s.config.max_batch_size, s.config.generation) == (12, 5)
    assert s.config.max_wait_s == pytest.approx(0.004)


def test_service_history_keeps_large_batches_through_a_quiet_spell() -> None:
    history = ServiceHistory(per_band=4)
    history.extend(ServicePoint(b, 0.005 + 0.001 * b, 10) for b in (16, 24, 32) for _ in range(4))
    # a long quiet spell of small batches: a last-N history would hold nothing else
    for _ in range(50):
        history.extend([ServicePoint(1.0, 0.006, 30), ServicePoint(2.0, 0.007, 30)])
    kept = history.points()
    assert len(kept) == len(history) <= 4 * 6
    assert max(p.batch_size for p in kept) == 32
    assert [p.batch_size for p in kept] == sorted(p.batch_size for p in kept)
    fit = fit_service_time(kept)
    assert fit is not None
    assert fit.per_item_s == pytest.approx(0.001)
    assert fit.intercept_s == pytest.approx(0.005)
    # each band keeps its newest points
    history.extend([ServicePoint(32.0, 0.040, 10)])
    assert history.points()[-1].duration_s == pytest.approx(0.040)
