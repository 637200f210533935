"""A cluster of runtime replicas on virtual time, running the runtime's own Batcher.

Nothing of the dispatch policy is re-implemented here: every replica is a real
:class:`batchpilot_runtime.batcher.Batcher` with the runtime's real
:class:`batchpilot_runtime.telemetry.Telemetry` as its observer, on an asyncio event loop
whose clock jumps to the next timer whenever nothing is ready (:class:`VirtualTimeLoop`).
The model is simulated: like the runtime's torch backend it tokenises in one worker and runs
the forward pass in another, each stage an ``asyncio.sleep`` of the time measured on the
real model at that batch size (:class:`ServiceProfile`).

Around the replicas the simulator models what Kubernetes adds: a Service spreading requests
at random over ready replicas, a startup delay before a new replica is ready, a delay before a
new ConfigMap reaches each replica, and drain on scale-down. A controller calls a policy
every ``interval_s`` with the replicas' real ``/metrics`` text.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import selectors
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from batchpilot_contract.batching import BatchingConfig
from batchpilot_runtime.batcher import Batch, Batcher, DeadlineExceeded, QueueFull
from batchpilot_runtime.telemetry import Telemetry

T = TypeVar("T")

RATE_WINDOW_S = 2.0
"""How far back a replica's request rate is counted (for its HTTP path): long enough that
Poisson noise at 30 requests/s is 13% (one standard deviation), short enough to follow a
scale-up."""

# --------------------------------------------------------------------------- virtual time


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking; a wait advances the loop's clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        loop = self.loop
        assert loop is not None
        if timeout is None:
            raise RuntimeError("virtual time: nothing scheduled and nothing ready (deadlock)")
        scheduled = loop._scheduled  # type: ignore[attr-defined]
        loop.advance_to(scheduled[0]._when if scheduled else loop.time() + timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual: when no callback is ready it jumps to the
    next scheduled timer instead of waiting. Code that reads time only through the loop and
    waits only on asyncio primitives runs unchanged, as fast as the CPU allows."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def advance_to(self, when: float) -> None:
        self._now = max(self._now, when)


def run_virtual(main: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop`."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


# --------------------------------------------------------------------------- service time


@dataclass(frozen=True)
class ServiceProfile:
    """Per-batch-size stage times in seconds, measured on the real model.

    ``tokenize[b-1]`` and ``forward[b-1]`` are the times for a batch of ``b``; beyond the
    measured sizes the last two points are extrapolated linearly."""

    tokenize: tuple[float, ...]
    forward: tuple[float, ...]
    source: str = ""
    jitter: tuple[float, ...] = ()
    """Measured ratios of a batch's time to the median for its size; each simulated batch
    draws one (empty: every batch takes exactly the profile's time)."""
    jitter_in_order: bool = False
    """``jitter`` is a recording in time order: each replica replays it from a random point
    on, so that slow spells last as long as they did. (A machine's speed drifts over seconds:
    drawn independently, every slow batch would be an isolated one, and queues would not
    build up behind slow spells as they do.)"""
    jitter_offset: int | None = None
    """Where every replica starts replaying an in-order ``jitter`` (None: a random point per
    replica). 0 replays a recording in step with the run it was recorded in."""
    http_path_s: tuple[float, ...] = ()
    """What a request's latency at the client had beyond its time in the batcher: the HTTP
    path (reading, parsing and validating it, encoding the answer, and the event loop's
    waits for the GIL meanwhile), recorded per request by ``bench.loop.validate`` against
    the real server; each simulated request draws one (empty: none)."""
    http_path_by_rate: tuple[tuple[float, tuple[float, ...]], ...] = ()
    """The same recording per request rate at one replica, ascending by rate. The HTTP work
    shares a core with the model, so its tail grows with the load; when given, a request
    draws from the recording whose rate is nearest to what its replica receives (its
    arrivals over the last ``RATE_WINDOW_S``), not from ``http_path_s``."""

    def http_path_at(self, rate: float) -> tuple[float, ...]:
        """The HTTP path recorded nearest to ``rate`` requests per second at one replica
        (``http_path_s`` when nothing was recorded per rate)."""
        if not self.http_path_by_rate:
            return self.http_path_s
        return min(self.http_path_by_rate, key=lambda entry: abs(entry[0] - rate))[1]

    @classmethod
    def load(cls, path: Path, *, smooth: bool = True, served: Path | None = None) -> ServiceProfile:
        """Read ``bench/loop/profile.py``'s JSON. ``smooth`` replaces each stage's medians by
        their least-squares line (the measurement noise of single sizes is not physics).
        ``served`` (``bench.loop.validate --write-served``'s JSON: what the real server
        recorded) replaces the in-process profile's spread with the server's, in order, and
        adds the HTTP path (per request rate, when recorded so)."""
        data = json.loads(path.read_text())
        sizes = data["batch_sizes"]
        if sizes != list(range(1, len(sizes) + 1)):
            raise ValueError(f"{path}: batch sizes must be 1..n")
        tok = [float(x) for x in data["tokenize_seconds"]]
        fwd = [float(x) for x in data["forward_seconds"]]
        if smooth:
            tok = _line(sizes, tok)
            fwd = _line(sizes, fwd)
        spread = json.loads(served.read_text()) if served is not None else data
        return cls(
            tuple(tok),
            tuple(fwd),
            source=str(path),
            jitter=tuple(float(x) for x in spread.get("jitter", ())),
            jitter_in_order=bool(spread.get("jitter_in_order", False)),
            http_path_s=tuple(float(x) for x in spread.get("http_path_seconds", ())),
            http_path_by_rate=tuple(
                sorted(
                    (float(rate), tuple(float(x) for x in times))
                    for rate, times in spread.get("http_path_by_rate", {}).items()
                )
            ),
        )

    @classmethod
    def linear(
        cls, tokenize: tuple[float, float], forward: tuple[float, float], max_batch: int = 64
    ) -> ServiceProfile:
        """Stage times ``a + c*b`` for ``b`` in 1..max_batch (for tests)."""
        return cls(
            tuple(tokenize[0] + tokenize[1] * b for b in range(1, max_batch + 1)),
            tuple(forward[0] + forward[1] * b for b in range(1, max_batch + 1)),
            source="linear",
        )

    @staticmethod
    def _at(table: tuple[float, ...], b: int) -> float:
        n = len(table)
        if b <= n:
            return table[b - 1]
        slope = table[-1] - table[-2] if n >= 2 else 0.0
        return table[-1] + slope * (b - n)

    def tokenize_s(self, b: int) -> float:
        return self._at(self.tokenize, b)

    def forward_s(self, b: int) -> float:
        return self._at(self.forward, b)

    def total_s(self, b: int) -> float:
        return self.tokenize_s(b) + self.forward_s(b)

    def capacity(self, b: int) -> float:
        """Items per second of one replica running full batches of ``b``, the two stages
        overlapping (the slower stage sets the pace)."""
        return b / max(self.tokenize_s(b), self.forward_s(b))


def _line(xs: Sequence[int], ys: Sequence[float]) -> list[float]:
    c, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return [max(1e-6, float(a + c * x)) for x in xs]


class SimulatedModel:
    """The runtime's two-stage model (tokenise worker, forward worker) on virtual time."""

    def __init__(
        self,
        profile: ServiceProfile,
        rng: random.Random | None = None,
        slowdown: Callable[[], float] | None = None,
        cores: asyncio.Semaphore | None = None,
    ) -> None:
        self.profile = profile
        self._rng = rng or random.Random(0)
        self._slowdown = slowdown
        self._cores = cores
        self._tokenizer = asyncio.Lock()
        self._device = asyncio.Lock()
        self._next = 0
        if profile.jitter_in_order and profile.jitter:
            offset = profile.jitter_offset
            self._next = self._rng.randrange(len(profile.jitter)) if offset is None else offset

    def _scale(self) -> float:
        jitter = self.profile.jitter
        if not jitter:
            return 1.0
        if self.profile.jitter_in_order:
            self._next += 1
            return jitter[(self._next - 1) % len(jitter)]
        return jitter[self._rng.randrange(len(jitter))]

    async def run(self, batch: Batch) -> list[object]:
        b = len(batch.payloads)
        scale = self._scale() * (self._slowdown() if self._slowdown else 1.0)
        async with self._tokenizer:
            await self._compute(self.profile.tokenize_s(b) * scale)
        async with self._device:
            await self._compute(self.profile.forward_s(b) * scale)
        return [None] * b

    async def _compute(self, seconds: float) -> None:
        """Run a stage: on a core of the node's when the replicas share them."""
        if self._cores is None:
            await asyncio.sleep(seconds)
            return
        async with self._cores:
            await asyncio.sleep(seconds)


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Trace:
    """A load shape: request rate (per second) as a function of time, over ``duration_s``."""

    name: str
    duration_s: float
    rate: Callable[[float], float]
    peak: float

    def arrivals(self, seed: int) -> np.ndarray:
        """Poisson arrival times (a non-homogeneous process, by thinning), sorted."""
        rng = np.random.default_rng(seed)
        n = rng.poisson(self.peak * self.duration_s)
        times = np.sort(rng.uniform(0.0, self.duration_s, size=n))
        rates = np.fromiter((self.rate(float(t)) for t in times), float, count=len(times))
        keep = rng.uniform(0.0, self.peak, size=len(times)) < rates
        return times[keep]


# --------------------------------------------------------------------------- cluster


@dataclass
class Replica:
    """One runtime pod: created at ``created``, ready at ``ready_at``, gone at ``ended``."""

    name: str
    created: float
    ready_at: float
    batcher: Batcher
    telemetry: Telemetry
    ended: float | None = None
    draining: bool = False
    arrivals: deque[float] = field(default_factory=deque)
    """Arrival times of its requests over the last ``RATE_WINDOW_S``."""

    def arrival_rate(self, now: float) -> float:
        """Requests per second it received over the last ``RATE_WINDOW_S`` (or since it
        became ready, at least half a second, if that is shorter)."""
        while self.arrivals and self.arrivals[0] < now - RATE_WINDOW_S:
            self.arrivals.popleft()
        return len(self.arrivals) / max(0.5, min(RATE_WINDOW_S, now - self.ready_at))

    @property
    def config(self) -> BatchingConfig:
        return self.batcher.config


@dataclass(frozen=True)
class Disturbance:
    """Slow spells shared by every replica: ``(start_s, end_s, factor)`` multiplies the
    service time of each batch that starts within ``[start_s, end_s)`` of the run."""

    spells: tuple[tuple[float, float, float], ...]

    def factor_at(self, t: float) -> float:
        """The service-time multiplier at ``t`` seconds into the run (1: undisturbed)."""
        factor = 1.0
        for start, end, f in self.spells:
            if start <= t < end:
                factor *= f
        return factor


@dataclass
class ClusterSettings:
    startup_s: float = 10.0
    """Pod creation to ready: scheduling, process start, model load and warm-up."""
    config_delay_s: tuple[float, float] = (2.0, 10.0)
    """A new ConfigMap reaches each replica after a delay drawn uniformly in this range."""
    stop_s: float = 0.0
    """Scale-down to the pod gone: a retired replica takes no new requests, finishes its
    queue, and holds its device at least this long (the runtime's drain delay and exit)."""
    disturbance: Disturbance | None = None
    """Spells when every replica's batches run slower (a noisy neighbour, a throttled node)."""
    shared_cores: int = 0
    """Replicas share this many cores, each batch stage holding one while it runs, as pods
    on one CPU node do (0: every replica has its own device, as GPU pods do)."""
    startup_cpu_s: float = 0.0
    """With ``shared_cores``: a starting replica holds a core this long (its model load)."""
    seed: int = 0


@dataclass
class RequestLog:
    arrival: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    """Seconds; ``inf`` for a request refused or timed out."""


class Cluster:
    """Replicas behind a Service, with startup and config-propagation delays."""

    def __init__(
        self,
        profile: ServiceProfile,
        config: BatchingConfig,
        settings: ClusterSettings,
        pipeline_depth: int = 2,
    ) -> None:
        self.profile = profile
        self.settings = settings
        self.config = config
        self.pipeline_depth = pipeline_depth
        self.replicas: list[Replica] = []
        self.log = RequestLog()
        self._rng = random.Random(settings.seed)
        self._http_rng = random.Random(settings.seed + 1)
        self._count = 0
        self._ready_cache: list[Replica] = []
        self._ready_dirty = True
        self._closing: set[asyncio.Task[None]] = set()
        self.t0 = self.now
        """When the run began, on the loop's clock."""
        self.cores = asyncio.Semaphore(settings.shared_cores) if settings.shared_cores else None

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- replicas

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.ended is None and not r.draining]

    def ready(self) -> list[Replica]:
        now = self.now
        if self._ready_dirty:
            self._ready_cache = [r for r in self.live() if r.ready_at <= now]
            self._ready_dirty = False
        return self._ready_cache

    def _mark(self) -> None:
        self._ready_dirty = True

    def _new_replica(self, ready_in: float) -> Replica:
        now = self.now
        self._count += 1
        disturbance = self.settings.disturbance
        slowdown = None
        if disturbance is not None:
            slowdown = lambda: disturbance.factor_at(self.now - self.t0)  # noqa: E731
        model = SimulatedModel(
            self.profile, random.Random(self._rng.random()), slowdown, self.cores
        )
        holder: dict[str, Batcher] = {}
        telemetry = Telemetry(
            queue_depth=lambda: holder["b"].queue_depth, config=lambda: holder["b"].config
        )
        batcher = Batcher(
            model, self.config, pipeline_depth=self.pipeline_depth, observer=telemetry
        )
        holder["b"] = batcher
        batcher.start()
        r = Replica(f"pod-{self._count}", now, now + ready_in, batcher, telemetry)
        self.replicas.append(r)
        if self.cores is not None and ready_in > 0 and self.settings.startup_cpu_s > 0:
            self._hold_a_core(min(ready_in, self.settings.startup_cpu_s))
        asyncio.get_running_loop().call_at(r.ready_at, self._mark)
        self._mark()
        return r

    def _hold_a_core(self, seconds: float) -> None:
        """A starting replica's model load, on one of the shared cores."""
        cores = self.cores
        assert cores is not None

        async def load() -> None:
            async with cores:
                await asyncio.sleep(seconds)

        task = asyncio.get_running_loop().create_task(load())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def start(self, n: int) -> None:
        """``n`` replicas ready at once (the state before the trace begins)."""
        for _ in range(n):
            self._new_replica(0.0)

    def scale_to(self, n: int) -> None:
        live = self.live()
        if n > len(live):
            for _ in range(n - len(live)):
                self._new_replica(self.settings.startup_s)
        elif n < len(live):
            # Kubernetes removes not-ready and newest pods first.
            victims = sorted(live, key=lambda r: (r.ready_at <= self.now, -r.created))
            for r in victims[: len(live) - n]:
                self._retire(r)
        self._mark()

    def _retire(self, r: Replica) -> None:
        r.draining = True
        gone_at = self.now + self.settings.stop_s

        async def drain() -> None:
            await r.batcher.aclose(drain=True)
            await asyncio.sleep(max(0.0, gone_at - self.now))
            r.ended = self.now

        task = asyncio.get_running_loop().create_task(drain())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def set_config(self, config: BatchingConfig) -> None:
        """Write a new ConfigMap; each live replica applies it after its own delay."""
        self.config = config
        lo, hi = self.settings.config_delay_s
        loop = asyncio.get_running_loop()
        for r in self.live():
            loop.call_later(self._rng.uniform(lo, hi), self._apply, r, config)

    def _apply(self, r: Replica, config: BatchingConfig) -> None:
        if r.ended is None and self.config.generation == config.generation:
            r.batcher.set_config(config)

    # -- requests

    def submit(self, arrival: float, offset: float = 0.0) -> None:
        """A request arriving now; ``arrival`` is its time as logged (``now - offset``)."""
        ready = self.ready()
        log = self.log
        if not ready:
            log.arrival.append(arrival)
            log.latency.append(math.inf)
            return
        r = ready[self._rng.randrange(len(ready))] if len(ready) > 1 else ready[0]
        http = self.profile.http_path_s
        if self.profile.http_path_by_rate:
            now = self.now
            r.arrivals.append(now)
            http = self.profile.http_path_at(r.arrival_rate(now))
        try:
            fut = r.batcher.submit("embed", None)
        except QueueFull:
            r.telemetry.request_done("rejected")
            log.arrival.append(arrival)
            log.latency.append(math.inf)
            return
        fut.add_done_callback(partial(self._done, r.telemetry, arrival, offset, http))

    def _done(
        self,
        telemetry: Telemetry,
        arrival: float,
        offset: float,
        http: tuple[float, ...],
        fut: asyncio.Future[Any],
    ) -> None:
        took = self.now - offset - arrival
        # The HTTP path counts on the client's clock and on the runtime's histogram too:
        # the runtime's request duration runs from reading the body to encoding the answer.
        if http:
            took += http[self._http_rng.randrange(len(http))]
        exc = fut.exception()
        if exc is None:
            telemetry.request_done("ok", took)
            latency = took
        elif isinstance(exc, DeadlineExceeded):
            telemetry.request_done("timeout", took)
            latency = math.inf
        else:
            telemetry.request_done("error")
            latency = math.inf
        self.log.arrival.append(arrival)
        self.log.latency.append(latency)

    async def close(self, end: float) -> None:
        for r in self.live():
            r.draining = True
            await r.batcher.aclose(drain=True)
        for r in self.replicas:
            if r.ended is None:
                r.ended = max(end, self.now)
        if self._closing:
            await asyncio.gather(*self._closing)

    def replica_seconds(self, end: float) -> float:
        return sum((min(r.ended, end) if r.ended else end) - r.created for r in self.replicas)


# --------------------------------------------------------------------------- control


class Policy(Protocol):
    """What a controller runs every ``interval_s``: it may scale and retune the cluster."""

    name: str
    interval_s: float

    def initial(self) -> tuple[int, BatchingConfig]: ...

    def tick(self, cluster: Cluster, now: float) -> None: ...


@dataclass
class Sample:
    """One point of the timeline, every ``sample_s``."""

    time: float
    replicas_live: int
    replicas_ready: int
    queue_depth: int
    max_batch_size: int
    max_wait_ms: float


@dataclass
class RunResult:
    policy: str
    trace: str
    target_s: float
    arrival: np.ndarray
    latency: np.ndarray
    replica_seconds: float
    timeline: list[Sample]
    decisions: list[tuple[float, str, str]]
    mean_batch: float = 0.0
    mean_batch_s: float = 0.0
    """The model's busy time per batch, as the runtime accounts it (overlap counted once)."""

    @property
    def requests(self) -> int:
        return len(self.latency)

    @property
    def within(self) -> float:
        """Share of requests answered within the target (refused and timed out count out)."""
        return float(np.mean(self.latency <= self.target_s)) if len(self.latency) else 1.0

    def quantile(self, q: float) -> float:
        """Latency quantile in seconds; ``inf`` when it falls on refused or timed-out ones."""
        if not len(self.latency):
            return 0.0
        value = float(np.quantile(np.minimum(self.latency, 1e12), q))
        return math.inf if value >= 1e12 else value


async def simulate(
    trace: Trace,
    policy: Policy,
    profile: ServiceProfile,
    *,
    target_s: float,
    settings: ClusterSettings | None = None,
    seed: int = 0,
    sample_s: float = 1.0,
) -> RunResult:
    """Drive ``trace`` through a cluster controlled by ``policy``; run on virtual time."""
    settings = settings or ClusterSettings(seed=seed)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    replicas, config = policy.initial()
    cluster = Cluster(profile, config, settings)
    cluster.start(replicas)
    arrivals = trace.arrivals(seed) + t0
    end = t0 + trace.duration_s
    timeline: list[Sample] = []
    decisions: list[tuple[float, str, str]] = getattr(policy, "decisions", [])

    def sample() -> None:
        now = loop.time()
        ready = cluster.ready()
        timeline.append(
            Sample(
                time=now - t0,
                replicas_live=len(cluster.live()),
                replicas_ready=len(ready),
                queue_depth=sum(r.batcher.queue_depth for r in cluster.live()),
                max_batch_size=cluster.config.max_batch_size,
                max_wait_ms=cluster.config.max_wait_ms,
            )
        )
        if now + sample_s < end:
            loop.call_at(now + sample_s, sample)

    def control() -> None:
        now = loop.time()
        policy.tick(cluster, now - t0)
        if now + policy.interval_s < end:
            loop.call_at(now + policy.interval_s, control)

    loop.call_at(t0, sample)
    loop.call_at(t0 + policy.interval_s, control)
    # Feed arrivals in one-second chunks so the timer heap stays small.
    chunk = 1.0
    i = 0
    n = len(arrivals)
    t = t0
    while i < n:
        upto = t + chunk
        j = int(np.searchsorted(arrivals, upto))
        for k in range(i, j):
            a = float(arrivals[k])
            loop.call_at(a, cluster.submit, a - t0, t0)
        i = j
        await asyncio.sleep(max(0.0, upto - loop.time()))
        t = upto
    await asyncio.sleep(max(0.0, end - loop.time()))
    await cluster.close(end)
    arrival = np.asarray(cluster.log.arrival)
    order = np.argsort(arrival, kind="stable")
    return RunResult(
        policy=policy.name,
        trace=trace.name,
        target_s=target_s,
        arrival=arrival[order],
        latency=np.asarray(cluster.log.latency)[order],
        replica_seconds=cluster.replica_seconds(end),
        timeline=timeline,
        decisions=list(decisions),
        mean_batch=sum(r.batcher.stats.batch_items for r in cluster.replicas)
        / max(1, sum(r.batcher.stats.batches for r in cluster.replicas)),
        mean_batch_s=sum(r.batcher.stats.batch_seconds for r in cluster.replicas)
        / max(1, sum(r.batcher.stats.batches for r in cluster.replicas)),
    )
