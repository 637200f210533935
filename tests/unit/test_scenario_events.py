"""The order of a BatchedModel's Events in the demo and e2e summaries."""

from __future__ import annotations

from batchpilot_localcluster.scenario import StatusSample, oldest_first


def test_events_within_one_second_keep_the_order_they_happened() -> None:
    # the API server stores lastTimestamp to the second; kopf's eventTime has microseconds
    retuned = {
        "reason": "Retuned",
        "lastTimestamp": "2026-11-27T06:58:30Z",
        "eventTime": "2026-11-27T06:58:30.120000Z",
    }
    in_force = {
        "reason": "ConfigInForce",
        "lastTimestamp": "2026-11-27T06:58:30Z",
        "eventTime": "2026-11-27T06:58:30.480000Z",
    }
    earlier = {"reason": "Scheduled", "lastTimestamp": "2026-11-27T06:58:29Z", "eventTime": None}
    ordered = oldest_first([in_force, retuned, earlier])
    assert [e["reason"] for e in ordered] == ["Scheduled", "Retuned", "ConfigInForce"]


def test_a_whole_second_sorts_before_its_fractions() -> None:
    # as text, "...:30Z" > "...:30.5Z" ('Z' > '.'); as times it is half a second earlier
    whole = {"reason": "A", "lastTimestamp": "2026-11-27T06:58:30Z", "eventTime": None}
    half = {"reason": "B", "eventTime": "2026-11-27T06:58:30.500000Z"}
    undated = {"reason": "C"}
    assert [e["reason"] for e in oldest_first([half, whole, undated])] == ["C", "A", "B"]


def test_a_status_sample_reads_the_decision_and_its_need() -> None:
    bm = {
        "status": {
            "ready": "1/2",
            "maxBatchSize": 8,
            "lastDecision": {"action": "hold", "reason": "low load", "neededReplicas": 1},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
        }
    }
    sample = StatusSample.from_object(3.0, bm)
    assert (sample.ready, sample.desired, sample.max_batch_size) == (1, 2, 8)
    assert (sample.action, sample.needed_replicas, sample.state) == ("hold", 1, "Ready")
    unsized = StatusSample.from_object(4.0, {"status": {"lastDecision": {"action": "hold"}}})
    assert unsized.needed_replicas is None
    assert unsized.state == "Unknown"
