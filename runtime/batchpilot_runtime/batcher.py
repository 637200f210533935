"""Dynamic batching: group concurrent requests into batches for a model, event-driven.

The batcher runs on any asyncio event loop, including a virtual-time one: it reads the clock
only through ``asyncio.get_running_loop().time()`` and waits only on asyncio futures woken by
``loop.call_at`` or by a new event (an arrival, a finished batch, a new config). It never
polls, never sleeps in a loop and never uses threads itself.

The model protocol
------------------
The batcher talks to the model through one coroutine (:class:`Model`)::

    async def run(self, batch: Batch) -> Sequence[object]

- ``batch.kind`` is the kind shared by every item (items of different kinds never share a
  batch); ``batch.payloads`` holds one payload per item, in the order results are expected.
- Return one result per payload. A result that is an exception instance fails that item only.
- Raise :class:`OutOfMemory` when the batch does not fit: the batcher splits it in halves and
  retries each half. Any other exception is isolated the same way, by halving, so that one
  bad item fails alone and its batch-mates still get their results.
- ``run`` may be entered by up to ``pipeline_depth`` batches at once (2 by default). A second
  batch only starts while another runs when it is already full, so it can be prepared
  (tokenised) while the device is busy. A model with one device serialises the device part
  itself, for example with a one-thread executor; a simulated model can pass
  ``pipeline_depth=1`` or hold an ``asyncio.Lock`` around ``await asyncio.sleep(service)``.

The torch backend (``backends.hf``) tokenises in one worker thread and runs the forward pass
in another, so the event loop stays free and tokenising batch N+1 overlaps batch N's forward.

Dispatch policy (``config`` is snapshotted once per batch)
----------------------------------------------------------
- A full batch (``maxBatchSize`` items, capped by the hardware limit) goes at once.
- Idle fast path: an item arriving while the model is idle goes at once; nothing is gained by
  waiting when there is no backlog.
- Backlog: items that queued while the model was busy wait at most ``maxWaitMs`` after the
  model becomes free for the batch to fill (larger batches cost less per item, which is what
  the operator trades against latency).
- Deadlines: an item still queued ``requestTimeoutMs`` after it arrived fails with
  :class:`DeadlineExceeded`. A cancelled future (client gone) leaves the queue at once.
- Among more than a batch of waiting items, the batch is the run of similar lengths that
  includes the oldest item (less padding, no starvation). Higher priority items go first.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any, Protocol

from batchpilot_contract.batching import BatchingConfig

log = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "BatchObserver",
    "Batcher",
    "BatcherClosed",
    "BatcherStats",
    "DeadlineExceeded",
    "Model",
    "OutOfMemory",
    "QueueFull",
]


class OutOfMemory(Exception):  # noqa: N818  (the name says what happened, as MemoryError does)
    """Raised by a model when a batch does not fit in device memory."""


class QueueFull(Exception):  # noqa: N818
    """The queue cannot take the items; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("queue full")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):  # noqa: N818
    """The item waited longer than ``requestTimeoutMs`` in the queue."""


class BatcherClosed(Exception):  # noqa: N818
    """The batcher is closing and takes no new items."""


@dataclass(frozen=True, slots=True)
class Batch:
    """What the model receives: items of one kind, in order."""

    kind: Hashable
    payloads: list[Any]


class Model(Protocol):
    """The model side of the batcher (see the module docstring)."""

    async def run(self, batch: Batch) -> Sequence[object]: ...


class BatchObserver(Protocol):
    """Receives measurements; :class:`~batchpilot_runtime.telemetry.Telemetry` is one."""

    def batch_started(self, queue_waits: Sequence[float]) -> None: ...

    def batch_finished(self, size: int, duration: float) -> None: ...


@dataclass(slots=True)
class BatcherStats:
    """Running totals since start, cheap to keep; ``/stats`` and the simulator read them."""

    items_submitted: int = 0
    items_rejected: int = 0
    items_expired: int = 0
    items_cancelled: int = 0
    items_done: int = 0
    items_failed: int = 0
    batches: int = 0
    batch_items: int = 0
    batch_seconds: float = 0.0
    queue_wait_seconds: float = 0.0
    splits: int = 0


@dataclass(eq=False, slots=True)
class _Item:
    kind: Hashable
    payload: Any
    length: int
    priority: int
    arrival: float
    expires: float
    future: asyncio.Future[Any]
    queued: bool = True


@dataclass(slots=True)
class _Queue:
    """Waiting items by priority level, oldest first within a level."""

    levels: dict[int, deque[_Item]] = field(default_factory=dict)
    size: int = 0

    def push(self, item: _Item) -> None:
        level = self.levels.get(item.priority)
        if level is None:
            level = self.levels[item.priority] = deque()
            self.levels = dict(sorted(self.levels.items(), reverse=True))
        level.append(item)
        self.size += 1

    def ordered(self) -> list[deque[_Item]]:
        """Non-empty levels, highest priority first."""
        return [level for level in self.levels.values() if level]

    def discard(self, item: _Item) -> None:
        """Take one item out wherever it is (a cancellation; rare)."""
        self.levels[item.priority].remove(item)
        self.size -= 1
        item.queued = False

    def compact(self, level: deque[_Item]) -> None:
        """Drop the items no longer queued from a level (after a batch took some)."""
        before = len(level)
        while level and not level[0].queued:
            level.popleft()
        if any(not it.queued for it in level):
            kept = [it for it in level if it.queued]
            level.clear()
            level.extend(kept)
        self.size -= before - len(level)


class Batcher:
    """Groups submitted items into batches for one model worker.

    Create it on the running loop's thread, ``start()`` it, ``submit()`` items and await the
    returned futures, and ``await aclose()`` to drain. ``set_config()`` applies a new
    :class:`BatchingConfig` from the next batch on.
    """

    def __init__(
        self,
        model: Model,
        config: BatchingConfig | None = None,
        *,
        max_batch_cap: int | None = None,
        pipeline_depth: int = 2,
        length_window: int = 2,
        observer: BatchObserver | None = None,
    ) -> None:
        if pipeline_depth < 1:
            raise ValueError("pipeline_depth must be at least 1")
        self._model = model
        self._config = config or BatchingConfig()
        self._hw_cap = max_batch_cap
        self._depth = pipeline_depth
        self._window = max(1, length_window)
        self._observer = observer
        self.stats = BatcherStats()
        self._queue = _Queue()
        self._in_flight = 0
        self._in_flight_items = 0
        self._free_since = -math.inf
        self._last_finish = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    # -- configuration and state -------------------------------------------------------------

    @property
    def config(self) -> BatchingConfig:
        return self._config

    def set_config(self, config: BatchingConfig) -> None:
        """Use ``config`` from the next batch on; queued items keep their deadlines."""
        self._config = config
        self._notify()

    @property
    def max_batch_cap(self) -> int | None:
        """The hardware cap on batch size (largest batch that fits), if any."""
        return self._hw_cap

    @property
    def batch_limit(self) -> int:
        """Items per batch now: ``maxBatchSize`` within the hardware cap."""
        cap = self._config.max_batch_size
        return cap if self._hw_cap is None else max(1, min(cap, self._hw_cap))

    @property
    def queue_depth(self) -> int:
        return self._queue.size

    @property
    def in_flight(self) -> int:
        """Batches handed to the model and not finished."""
        return self._in_flight

    @property
    def load(self) -> int:
        """Items queued or running: what a router balances on."""
        return self._queue.size + self._in_flight_items

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("batcher already started")
        self._runner = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop taking items; run what is queued (``drain``) or fail it; wait for batches."""
        self._closing = True
        if not drain:
            for level in self._queue.ordered():
                while level:
                    item = level.popleft()
                    item.queued = False
                    _fail(item.future, BatcherClosed("shutting down"))
            self._queue.size = 0
        self._notify()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- submission --------------------------------------------------------------------------

    def submit(
        self, kind: Hashable, payload: Any, *, length: int = 0, priority: int = 0
    ) -> asyncio.Future[Any]:
        """Queue one item; the future gets its result or exception."""
        return self.submit_many(kind, [payload], lengths=[length], priority=priority)[0]

    def submit_many(
        self,
        kind: Hashable,
        payloads: Sequence[Any],
        *,
        lengths: Sequence[int] | None = None,
        priority: int = 0,
    ) -> list[asyncio.Future[Any]]:
        """Queue several items at once: all are admitted or none (:class:`QueueFull`)."""
        if self._closing:
            raise BatcherClosed("shutting down")
        cfg = self._config
        n = len(payloads)
        if self._queue.size + n > cfg.max_queue:
            self.stats.items_rejected += n
            raise QueueFull(self._retry_after())
        loop = asyncio.get_running_loop()
        now = loop.time()
        expires = now + cfg.request_timeout_s
        futures: list[asyncio.Future[Any]] = []
        for i, payload in enumerate(payloads):
            fut: asyncio.Future[Any] = loop.create_future()
            item = _Item(kind, payload, lengths[i] if lengths else 0, priority, now, expires, fut)
            fut.add_done_callback(partial(self._on_done_early, item))
            self._queue.push(item)
            futures.append(fut)
        self.stats.items_submitted += n
        self._notify()
        return futures

    def _on_done_early(self, item: _Item, _: asyncio.Future[Any]) -> None:
        """A future finished while its item still queued: the client cancelled it."""
        if item.queued:
            self._queue.discard(item)
            self.stats.items_cancelled += 1
            self._notify()

    def _retry_after(self) -> float:
        """A rough time for the queue to drain, in seconds (at least 1)."""
        s = self.stats
        if s.batch_items == 0:
            return 1.0
        per_item = s.batch_seconds / s.batch_items
        return max(1.0, math.ceil(self._queue.size * per_item))

    # -- the dispatch loop -------------------------------------------------------------------

    def _notify(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep_until(self, when: float) -> None:
        """Wait for a notification or for the loop clock to reach ``when``."""
        loop = asyncio.get_running_loop()
        waiter = self._wakeup = loop.create_future()
        timer = None if math.isinf(when) else loop.call_at(when, _resolve, waiter)
        try:
            await waiter
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wake = self._expire(now)
            if self._queue.size == 0:
                if self._closing:
                    return
                await self._sleep_until(math.inf)
                continue
            if self._in_flight < self._depth:
                cfg = self._config
                limit = self.batch_limit
                due = self._dispatch_due(now, cfg, limit)
                if due <= now:
                    self._dispatch(self._take(limit), cfg)
                    continue
                wake = min(wake, due)
            await self._sleep_until(wake)

    def _dispatch_due(self, now: float, cfg: BatchingConfig, limit: int) -> float:
        """When the next batch should go (``<= now``: go now; ``inf``: on the next event)."""
        if self._queue.size >= limit or self._closing:
            return now
        if self._in_flight > 0:
            return math.inf  # only a full batch may start while the model is busy
        oldest = min(level[0].arrival for level in self._queue.ordered())
        if oldest >= self._free_since:
            return now  # idle fast path: it arrived to an idle model
        return self._free_since + cfg.max_wait_s  # a backlog: let it fill a little

    def _expire(self, now: float) -> float:
        """Fail queued items past their deadline; return the next deadline."""
        nearest = math.inf
        for level in self._queue.ordered():
            while level and level[0].expires <= now:
                item = level.popleft()
                self._queue.size -= 1
                item.queued = False
                self.stats.items_expired += 1
                _fail(item.future, DeadlineExceeded("request timed out in the queue"))
            if level:
                nearest = min(nearest, level[0].expires)
        return nearest

    def _take(self, limit: int) -> list[_Item]:
        """Choose the next batch: the oldest top-priority item and up to ``limit - 1`` more."""
        levels = self._queue.ordered()
        head = levels[0][0]
        kind = head.kind
        window = limit * self._window
        first = [it for it in islice(levels[0], window) if it.kind == kind]
        chosen = _similar_lengths(first, limit) if len(first) > limit else first
        for level in levels[1:]:
            if len(chosen) >= limit:
                break
            room = limit - len(chosen)
            chosen += [it for it in islice(level, window) if it.kind == kind][:room]
        for item in chosen:
            item.queued = False
        for level in levels:
            self._queue.compact(level)
        return chosen

    def _dispatch(self, items: list[_Item], cfg: BatchingConfig) -> None:
        now = asyncio.get_running_loop().time()
        waits = [now - it.arrival for it in items]
        self.stats.queue_wait_seconds += sum(waits)
        if self._observer is not None:
            self._observer.batch_started(waits)
        self._in_flight += 1
        self._in_flight_items += len(items)
        task = asyncio.get_running_loop().create_task(self._run(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running batches ---------------------------------------------------------------------

    async def _run(self, items: list[_Item]) -> None:
        try:
            await self._run_split(items)
        except BaseException as exc:  # cancelled: still answer everyone, then propagate
            for item in items:
                _fail(item.future, BatcherClosed(f"batch aborted: {exc!r}"))
            raise
        finally:
            self._in_flight -= 1
            self._in_flight_items -= len(items)
            if self._in_flight == 0:
                self._free_since = asyncio.get_running_loop().time()
            self._notify()

    async def _run_split(self, items: list[_Item]) -> None:
        live = [it for it in items if not it.future.done()]
        if not live:
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            results = await self._model.run(Batch(live[0].kind, [it.payload for it in live]))
            if len(results) != len(live):
                raise RuntimeError(f"model returned {len(results)} results for {len(live)} items")
        except Exception as exc:
            self._record_batch(len(live), start)
            if len(live) == 1:
                self.stats.items_failed += 1
                _fail(live[0].future, exc)
                return
            self.stats.splits += 1
            if isinstance(exc, OutOfMemory):
                log.warning("batch of %d did not fit in memory; splitting it", len(live))
            else:
                log.warning("batch of %d failed (%r); splitting to isolate it", len(live), exc)
            mid = len(live) // 2
            await self._run_split(live[:mid])
            await self._run_split(live[mid:])
            return
        self._record_batch(len(live), start)
        for item, result in zip(live, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                self.stats.items_failed += 1
                item.future.set_exception(result)
            else:
                self.stats.items_done += 1
                item.future.set_result(result)

    def _record_batch(self, size: int, start: float) -> None:
        """Account one model run. Its duration is the time the model spent on it alone: a
        batch that started while another ran (pipelining) counts from that one's end, so the
        durations add up to busy time and measure the service time of a batch."""
        now = asyncio.get_running_loop().time()
        duration = now - max(start, self._last_finish)
        self._last_finish = now
        s = self.stats
        s.batches += 1
        s.batch_items += size
        s.batch_seconds += duration
        if self._observer is not None:
            self._observer.batch_finished(size, duration)


def _similar_lengths(items: list[_Item], limit: int) -> list[_Item]:
    """The ``limit`` items of closest lengths that include ``items[0]`` (the oldest)."""
    order = sorted(range(len(items)), key=lambda i: items[i].length)
    at = order.index(0)
    starts = range(max(0, at - limit + 1), min(at, len(order) - limit) + 1)
    best = min(starts, key=lambda s: items[order[s + limit - 1]].length - items[order[s]].length)
    return [items[i] for i in sorted(order[best : best + limit])]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
