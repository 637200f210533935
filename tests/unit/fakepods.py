"""A runtime pod's metrics, written with prometheus_client exactly as the runtime writes
them, for tests of the observation and the tuning loop."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.exposition import generate_latest

from batchpilot_operator.metrics import Scrape, parse_metrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class FakePod:
    """A pod's metrics, written with prometheus_client exactly as a runtime would."""

    def __init__(self, max_batch_size: int = 16, max_wait_s: float = 0.005, gen: int = 1) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue = Gauge("batchpilot_queue_depth", "waiting", registry=r)
        self.requests = Counter("batchpilot_requests_total", "answered", ["outcome"], registry=r)
        self.latency = PromHistogram(
            "batchpilot_request_duration_seconds", "e2e", buckets=LATENCY_BUCKETS, registry=r
        )
        self.wait = PromHistogram(
            "batchpilot_queue_wait_seconds", "wait", buckets=LATENCY_BUCKETS, registry=r
        )
        self.size = PromHistogram(
            "batchpilot_batch_size", "items", buckets=SIZE_BUCKETS, registry=r
        )
        self.duration = PromHistogram(
            "batchpilot_batch_duration_seconds", "exec", buckets=LATENCY_BUCKETS, registry=r
        )
        self.max_batch_size = Gauge("batchpilot_config_max_batch_size", "cfg", registry=r)
        self.max_wait = Gauge("batchpilot_config_max_wait_seconds", "cfg", registry=r)
        self.generation = Gauge("batchpilot_config_generation", "cfg", registry=r)
        self.load_config(max_batch_size, max_wait_s, gen)

    def load_config(self, max_batch_size: int, max_wait_s: float, gen: int) -> None:
        """Report this config in force (as the runtime does after a reload)."""
        self.max_batch_size.set(max_batch_size)
        self.max_wait.set(max_wait_s)
        self.generation.set(gen)

    def serve(self, n: int, latency_s: float, batch_size: int, batch_s: float) -> None:
        """``n`` requests answered ok in batches of ``batch_size`` taking ``batch_s``."""
        for _ in range(n):
            self.requests.labels("ok").inc()
            self.latency.observe(latency_s)
            self.wait.observe(latency_s - batch_s)
        for _ in range(n // batch_size):
            self.size.observe(batch_size)
            self.duration.observe(batch_s)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def scrape_of(t: float, pods: dict[str, FakePod], missing: dict[str, str] | None = None) -> Scrape:
    return Scrape(
        time=t,
        samples={name: parse_metrics(p.text(), pod=name, at=t) for name, p in pods.items()},
        missing=missing or {},
    )
