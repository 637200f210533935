"""The policies the loop benchmark compares, each driving a simulated :class:`Cluster`.

* :class:`BatchpilotPolicy`: the operator's own observation and policy,
  ``metrics.observe`` on the replicas' real ``/metrics`` text and ``policy.decide``.
* :class:`StaticPolicy`: fixed replicas and a fixed batching config.
* :class:`HpaPolicy`: the Kubernetes HorizontalPodAutoscaler algorithm on queue depth per
  replica, with a fixed batching config.
* :class:`InstantPolicy`: a reference that knows the true rate and reacts at once; what it
  misses is the price of the pod start-up delay alone.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loop.simulator import Cluster

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator.metrics import Scrape, ServiceHistory, observe, parse_metrics
from batchpilot_operator.policy import CurrentState, TuningSpec, decide


@dataclass
class StaticPolicy:
    """Fixed replicas and batching: what a user gets by writing numbers once."""

    replicas: int
    config: BatchingConfig
    name: str = "static"
    interval_s: float = 3600.0
    decisions: list[tuple[float, str, str]] = field(default_factory=list)

    def initial(self) -> tuple[int, BatchingConfig]:
        return self.replicas, self.config

    def tick(self, cluster: Cluster, now: float) -> None:
        return None


@dataclass
class HpaPolicy:
    """The HPA controller's algorithm (autoscaling/v2 defaults) on a pods metric: the mean
    queue depth per ready replica over the sync period (sampled every second, as an
    ``avg_over_time`` through a metrics adapter would).

    * ``desired = ceil(ready * metric / target)``, no change within a 0.1 tolerance;
    * scale-up: pods not yet ready count as zero load (the controller's damping), and at most
      ``max(100%, 4 pods)`` more per 15 s period;
    * scale-down: the highest recommendation of the last 300 s (stabilisation window).

    The window starts with ``start_replicas`` recommended at time 0, as if the HPA had run at
    the trace's first rate before it began. Without it, its first sync scales straight down
    on an empty window, overloads, and the overload then holds ``max_replicas`` for 300 s:
    through the step or spike, by accident of its own start.
    """

    target: float
    config: BatchingConfig
    min_replicas: int
    max_replicas: int
    start_replicas: int = 1
    sync_s: float = 15.0
    tolerance: float = 0.1
    stabilization_s: float = 300.0
    name: str = "hpa"
    interval_s: float = 1.0
    decisions: list[tuple[float, str, str]] = field(default_factory=list)
    _samples: list[float] = field(default_factory=list)
    _recs: deque[tuple[float, int]] = field(default_factory=deque)
    _next_sync: float = 15.0

    def __post_init__(self) -> None:
        self._recs.append((0.0, self.start_replicas))

    def initial(self) -> tuple[int, BatchingConfig]:
        return self.start_replicas, self.config

    def tick(self, cluster: Cluster, now: float) -> None:
        ready = cluster.ready()
        if ready:
            self._samples.append(sum(r.batcher.queue_depth for r in ready) / len(ready))
        if now + 1e-9 < self._next_sync:
            return
        self._next_sync = now + self.sync_s
        current = len(cluster.live())
        n_ready = len(ready)
        if not self._samples or n_ready == 0:
            return
        metric = sum(self._samples) / len(self._samples)
        self._samples.clear()
        ratio = metric / self.target
        rec = current
        if abs(ratio - 1.0) > self.tolerance:
            if ratio > 1.0 and current > n_ready:
                # pods still starting count as zero load for a scale-up
                ratio = metric * n_ready / current / self.target
                rec = math.ceil(ratio * current) if ratio > 1.0 + self.tolerance else current
            else:
                rec = math.ceil(ratio * n_ready)
        rec = max(self.min_replicas, min(self.max_replicas, rec))
        self._recs.append((now, rec))
        while self._recs and self._recs[0][0] < now - self.stabilization_s:
            self._recs.popleft()
        if rec > current:
            desired = min(rec, max(2 * current, current + 4))
        else:
            desired = min(current, max(r for _, r in self._recs))
        desired = max(self.min_replicas, min(self.max_replicas, desired))
        if desired != current:
            cluster.scale_to(desired)
            self.decisions.append(
                (now, "scale", f"queue/replica {metric:.2f} vs {self.target:g}: {desired}")
            )


@dataclass
class BatchpilotPolicy:
    """The operator's loop: scrape the ready replicas' metrics, observe, decide, apply."""

    spec: TuningSpec
    start_replicas: int = 1
    start_config: BatchingConfig = field(default_factory=BatchingConfig)
    name: str = "batchpilot"
    decisions: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        spec = self.spec
        cfg = self.start_config
        size = max(spec.min_batch_size, min(spec.max_batch_size, cfg.max_batch_size))
        wait = max(spec.min_wait_ms, min(spec.max_wait_ms, cfg.max_wait_ms))
        self._config = cfg.model_copy(
            update={"max_batch_size": size, "max_wait_ms": wait, "generation": 1}
        )
        self._state = CurrentState(
            replicas=self.start_replicas,
            max_batch_size=size,
            max_wait_ms=wait,
            generation=1,
        )
        self._previous: Scrape | None = None
        self._history = ServiceHistory()

    @property
    def interval_s(self) -> float:
        return self.spec.interval_s

    def initial(self) -> tuple[int, BatchingConfig]:
        return self.start_replicas, self._config

    def tick(self, cluster: Cluster, now: float) -> None:
        samples = {
            r.name: parse_metrics(r.telemetry.render().decode(), pod=r.name, at=now)
            for r in cluster.ready()
        }
        scrape = Scrape(time=now, samples=samples)
        obs = observe(self._previous, scrape, history=self._history.points())
        self._previous = scrape
        self._history.extend(obs.service_points)
        state = self._state
        d = decide(obs, state, self.spec, now)
        if d.replicas_changed:
            cluster.scale_to(d.replicas)
        if d.config_changed:
            self._config = self._config.model_copy(
                update={
                    "max_batch_size": d.max_batch_size,
                    "max_wait_ms": d.max_wait_ms,
                    "generation": state.generation + 1,
                }
            )
            cluster.set_config(self._config)
        self._state = d.next_state(state, now)
        if d.action != "hold":
            self.decisions.append((now, d.action, d.reason))


@dataclass
class InstantPolicy:
    """A reference no real autoscaler can beat on reaction time: it reads the trace's true
    rate every second and at once sizes the replicas for it (busy ``utilization`` of the
    time at a fixed batch config), scaling down as fast as up. What it still misses is the
    cost of the pod start-up delay alone, with no standing headroom."""

    rate: Callable[[float], float]
    capacity: float
    """Items per second of one busy replica at ``config``."""
    config: BatchingConfig
    min_replicas: int
    max_replicas: int
    start_replicas: int = 1
    utilization: float = 0.8
    name: str = "instant"
    interval_s: float = 1.0
    decisions: list[tuple[float, str, str]] = field(default_factory=list)

    def initial(self) -> tuple[int, BatchingConfig]:
        return self.start_replicas, self.config

    def tick(self, cluster: Cluster, now: float) -> None:
        need = math.ceil(self.rate(now) / (self.utilization * self.capacity))
        desired = max(self.min_replicas, min(self.max_replicas, need))
        if desired != len(cluster.live()):
            cluster.scale_to(desired)
            self.decisions.append((now, "scale", f"rate {self.rate(now):.0f}/s: {desired}"))
