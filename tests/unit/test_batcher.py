"""The batcher on a fake model, on a virtual-time event loop (deterministic, no wall clock).

The virtual loop jumps its clock to the next timer whenever nothing is ready to run, which is
exactly how a discrete-event simulator drives the same Batcher class.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from batchpilot_contract.batching import BatchingConfig
from batchpilot_runtime.batcher import (
    Batch,
    Batcher,
    BatcherClosed,
    DeadlineExceeded,
    OutOfMemory,
    QueueFull,
)

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task is waiting on a timer."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if not self._ready and scheduled:  # type: ignore[attr-defined]
            self._now = max(self._now, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def now() -> float:
    return asyncio.get_running_loop().time()


class FakeModel:
    """One device: a batch of n takes ``service(n)`` seconds; records what it ran and when."""

    def __init__(
        self,
        service: Callable[[int], float] = lambda n: 0.010 + 0.001 * n,
        *,
        fail_on: frozenset[str] = frozenset(),
        error_results: frozenset[str] = frozenset(),
        oom_above: int | None = None,
    ) -> None:
        self.service = service
        self.fail_on = fail_on
        self.error_results = error_results
        self.oom_above = oom_above
        self.lock = asyncio.Lock()
        self.started: list[tuple[float, list[str]]] = []
        self.kinds: list[object] = []
        self.concurrent = 0
        self.max_concurrent = 0

    @property
    def batches(self) -> list[list[str]]:
        return [payloads for _, payloads in self.started]

    async def run(self, batch: Batch) -> Sequence[object]:
        payloads = list(batch.payloads)
        self.started.append((now(), payloads))
        self.kinds.append(batch.kind)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            async with self.lock:
                if self.oom_above is not None and len(payloads) > self.oom_above:
                    raise OutOfMemory(f"{len(payloads)} items do not fit")
                await asyncio.sleep(self.service(len(payloads)))
                if self.fail_on.intersection(payloads):
                    raise ValueError("poisoned batch")
                return [
                    ValueError(f"bad item {p}") if p in self.error_results else f"out:{p}"
                    for p in payloads
                ]
        finally:
            self.concurrent -= 1


def config(**fields: Any) -> BatchingConfig:
    base: dict[str, Any] = {"max_batch_size": 4, "max_wait_ms": 50.0}
    base.update(fields)
    return BatchingConfig(**base)


async def tick() -> None:
    """Let the dispatcher run once (it starts what is due before anything else arrives)."""
    await asyncio.sleep(0)


async def at(when: float) -> None:
    """Sleep until virtual time ``when``."""
    await asyncio.sleep(max(0.0, when - now()))


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.batches: list[tuple[int, float]] = []

    def batch_started(self, queue_waits: Sequence[float]) -> None:
        self.waits.extend(queue_waits)

    def batch_finished(self, size: int, duration: float) -> None:
        self.batches.append((size, duration))


def test_idle_fast_path_runs_a_lone_item_at_once() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, config(max_wait_ms=1000.0))
        batcher.start()
        result = await batcher.submit("embed", "a")
        assert result == "out:a"
        assert model.started == [(0.0, ["a"])]
        await batcher.aclose()

    run_virtual(main)


def test_size_trigger_starts_a_full_batch_while_the_model_is_busy() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.100)
        recorder = Recorder()
        batcher = Batcher(model, config(max_batch_size=3, max_wait_ms=1000.0), observer=recorder)
        batcher.start()
        first = batcher.submit("embed", "a")
        await at(0.010)
        rest = [batcher.submit("embed", p) for p in "bcd"]
        assert await asyncio.gather(first, *rest) == ["out:a", "out:b", "out:c", "out:d"]
        # b, c, d filled a batch at 10 ms and went at once, to be prepared while a ran.
        assert model.started == [(0.0, ["a"]), (0.010, ["b", "c", "d"])]
        assert model.max_concurrent == 2
        # Durations are the model's time on each batch alone, not the pipelined wait.
        assert recorder.batches == [(1, pytest.approx(0.100)), (3, pytest.approx(0.100))]
        await batcher.aclose()

    run_virtual(main)


def test_time_trigger_lets_a_backlog_fill_for_max_wait_after_the_model_frees() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=8, max_wait_ms=50.0))
        batcher.start()
        first = batcher.submit("embed", "a")
        await at(0.001)
        second = batcher.submit("embed", "b")  # queued behind a busy model: a backlog
        await at(0.030)
        third = batcher.submit("embed", "c")  # joins the backlog while it fills
        await asyncio.gather(first, second, third)
        assert model.started == [(0.0, ["a"]), (pytest.approx(0.060), ["b", "c"])]
        await batcher.aclose()

    run_virtual(main)


def test_zero_wait_dispatches_the_backlog_as_soon_as_the_model_frees() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=8, max_wait_ms=0.0))
        batcher.start()
        futures = [batcher.submit("embed", "a")]
        await at(0.002)
        futures += [batcher.submit("embed", p) for p in "bc"]
        await asyncio.gather(*futures)
        assert model.started == [(0.0, ["a"]), (pytest.approx(0.010), ["b", "c"])]
        await batcher.aclose()

    run_virtual(main)


def test_config_change_applies_from_the_next_batch() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=4, max_wait_ms=0.0))
        batcher.start()
        busy = batcher.submit("embed", "x")
        await tick()
        first = [batcher.submit("embed", f"a{i}") for i in range(6)]
        await asyncio.gather(busy, *first)
        batcher.set_config(config(max_batch_size=2, max_wait_ms=0.0, generation=2))
        assert batcher.config.generation == 2
        second = [batcher.submit("embed", f"b{i}") for i in range(5)]
        await asyncio.gather(*second)
        sizes = [len(b) for b in model.batches]
        assert sizes == [1, 4, 2, 2, 2, 1]
        await batcher.aclose()

    run_virtual(main)


def test_a_cancelled_item_leaves_the_queue_and_never_runs() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.050)
        batcher = Batcher(model, config(max_batch_size=8, max_wait_ms=0.0))
        batcher.start()
        busy = batcher.submit("embed", "busy")
        await tick()
        keep = batcher.submit("embed", "keep")
        gone = batcher.submit("embed", "gone")
        await at(0.010)
        assert batcher.queue_depth == 2
        gone.cancel()
        await asyncio.sleep(0)
        assert batcher.queue_depth == 1
        assert await keep == "out:keep"
        await busy
        assert all("gone" not in b for b in model.batches)
        assert batcher.stats.items_cancelled == 1
        await batcher.aclose()

    run_virtual(main)


def test_items_past_their_deadline_fail_without_running() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.100)
        batcher = Batcher(model, config(max_batch_size=8, request_timeout_ms=30.0))
        batcher.start()
        busy = batcher.submit("embed", "busy")
        await tick()
        late = batcher.submit("embed", "late")
        with pytest.raises(DeadlineExceeded):
            await late
        assert now() == pytest.approx(0.030)
        assert await busy == "out:busy"
        assert model.batches == [["busy"]]
        assert batcher.stats.items_expired == 1
        await batcher.aclose()

    run_virtual(main)


def test_a_full_queue_refuses_new_items_all_or_nothing() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=2, max_queue=3))
        batcher.start()
        accepted = batcher.submit_many("embed", ["a", "b", "c"])
        with pytest.raises(QueueFull) as refused:
            batcher.submit("embed", "d")
        assert refused.value.retry_after >= 1
        assert batcher.queue_depth == 3
        assert await asyncio.gather(*accepted) == ["out:a", "out:b", "out:c"]
        assert batcher.stats.items_rejected == 1
        await batcher.aclose()

    run_virtual(main)


def test_a_batch_out_of_memory_is_split_and_retried() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010, oom_above=2)
        batcher = Batcher(model, config(max_batch_size=8, max_wait_ms=0.0))
        batcher.start()
        payloads = [f"p{i}" for i in range(7)]
        busy = batcher.submit("embed", "busy")
        futures = batcher.submit_many("embed", payloads)
        results = await asyncio.gather(busy, *futures)
        assert results == ["out:busy"] + [f"out:{p}" for p in payloads]
        ran = [b for b in model.batches if len(b) <= 2]
        assert sorted(p for b in ran for p in b) == sorted(["busy", *payloads])
        assert batcher.stats.splits == 3  # 7 -> 3 + 4, 3 -> 1 + 2, 4 -> 2 + 2
        await batcher.aclose()

    run_virtual(main)


def test_one_failing_item_does_not_fail_its_batch_mates() -> None:
    async def main() -> None:
        model = FakeModel(fail_on=frozenset({"poison"}), error_results=frozenset({"odd"}))
        batcher = Batcher(model, config(max_batch_size=8, max_wait_ms=0.0))
        batcher.start()
        busy = batcher.submit("embed", "busy")
        payloads = ["a", "poison", "b", "odd", "c", "d"]
        futures = batcher.submit_many("embed", payloads)
        outcomes = await asyncio.gather(busy, *futures, return_exceptions=True)
        by_payload = dict(zip(["busy", *payloads], outcomes, strict=True))
        assert isinstance(by_payload.pop("poison"), ValueError)
        assert isinstance(by_payload.pop("odd"), ValueError)
        assert by_payload == {p: f"out:{p}" for p in ["busy", "a", "b", "c", "d"]}
        await batcher.aclose()

    run_virtual(main)


def test_higher_priority_items_go_first() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=2, max_wait_ms=0.0), pipeline_depth=1)
        batcher.start()
        futures = [batcher.submit("embed", "busy")]
        await tick()
        futures += [batcher.submit("embed", p) for p in ("n1", "n2", "n3")]
        futures.append(batcher.submit("embed", "urgent", priority=1))
        await asyncio.gather(*futures)
        assert model.batches == [["busy"], ["urgent", "n1"], ["n2", "n3"]]
        await batcher.aclose()

    run_virtual(main)


def test_a_batch_groups_similar_lengths_around_the_oldest_item() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=3, max_wait_ms=0.0), pipeline_depth=1)
        batcher.start()
        futures = [batcher.submit("embed", "busy")]
        await tick()
        lengths = {"s1": 5, "L1": 400, "s2": 6, "L2": 390, "s3": 4, "L3": 410}
        for payload, length in lengths.items():
            futures.append(batcher.submit("embed", payload, length=length))
        await asyncio.gather(*futures)
        assert model.batches == [["busy"], ["s1", "s2", "s3"], ["L1", "L2", "L3"]]
        await batcher.aclose()

    run_virtual(main)


def test_kinds_never_share_a_batch() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=8, max_wait_ms=0.0))
        batcher.start()
        futures = [batcher.submit("embed", "busy")]
        futures += [batcher.submit(kind, f"{kind}{i}") for i in range(3) for kind in ("x", "y")]
        await asyncio.gather(*futures)
        assert model.batches == [["busy"], ["x0", "x1", "x2"], ["y0", "y1", "y2"]]
        assert model.kinds == ["embed", "x", "y"]
        await batcher.aclose()

    run_virtual(main)


def test_hardware_cap_limits_the_batch_size() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=16, max_wait_ms=0.0), max_batch_cap=3)
        batcher.start()
        assert batcher.batch_limit == 3
        await asyncio.gather(*batcher.submit_many("embed", [str(i) for i in range(7)]))
        assert max(len(b) for b in model.batches) == 3
        await batcher.aclose()

    run_virtual(main)


def test_aclose_drains_what_was_accepted_and_refuses_more() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=2, max_wait_ms=1000.0))
        batcher.start()
        futures = batcher.submit_many("embed", [str(i) for i in range(5)])
        await batcher.aclose()
        assert [f.result() for f in futures] == [f"out:{i}" for i in range(5)]
        with pytest.raises(BatcherClosed):
            batcher.submit("embed", "late")
        assert not batcher.running

    run_virtual(main)


def test_aclose_without_drain_fails_the_queue() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010)
        batcher = Batcher(model, config(max_batch_size=1, max_wait_ms=0.0), pipeline_depth=1)
        batcher.start()
        futures = batcher.submit_many("embed", ["a", "b", "c"])
        await asyncio.sleep(0)
        await batcher.aclose(drain=False)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert outcomes[0] == "out:a"
        assert all(isinstance(o, BatcherClosed) for o in outcomes[1:])

    run_virtual(main)


def test_observer_sees_waits_sizes_and_durations() -> None:
    async def main() -> None:
        model = FakeModel(service=lambda n: 0.010 * n)
        recorder = Recorder()
        batcher = Batcher(model, config(max_batch_size=2, max_wait_ms=0.0), observer=recorder)
        batcher.start()
        await asyncio.gather(*batcher.submit_many("embed", ["a", "b", "c"]))
        await batcher.aclose()
        assert recorder.batches == [
            (2, pytest.approx(0.020)),
            (1, pytest.approx(0.010)),
        ]
        assert recorder.waits == [0.0, 0.0, pytest.approx(0.020)]
        assert batcher.stats.batches == 2
        assert batcher.stats.batch_items == 3

    run_virtual(main)


def test_every_future_is_resolved_under_a_mixed_random_workload() -> None:
    """Arrivals, cancellations, deadlines, failures, OOM splits and config changes at once."""

    async def main() -> None:
        rng = random.Random(7)
        model = FakeModel(
            service=lambda n: 0.002 + 0.0005 * n,
            fail_on=frozenset({"p13", "p77"}),
            error_results=frozenset({"p5"}),
            oom_above=12,
        )
        batcher = Batcher(model, config(max_batch_size=16, max_queue=64, request_timeout_ms=40.0))
        batcher.start()
        futures: list[asyncio.Future[Any]] = []
        refused = 0
        for i in range(400):
            await asyncio.sleep(rng.expovariate(1500.0))
            if i % 100 == 50:
                batcher.set_config(config(max_batch_size=rng.choice([2, 8, 32]), generation=i))
            try:
                fut = batcher.submit("embed", f"p{i}", length=rng.randint(1, 64))
            except QueueFull:
                refused += 1
                continue
            futures.append(fut)
            if rng.random() < 0.05:
                fut.cancel()
        await batcher.aclose()
        assert all(f.done() for f in futures)
        ok = sum(1 for f in futures if not f.cancelled() and f.exception() is None)
        s = batcher.stats
        assert s.items_submitted == len(futures)
        assert s.items_rejected == refused
        assert ok == s.items_done
        assert ok + s.items_failed + s.items_expired + s.items_cancelled == len(futures)
        assert s.items_failed >= 1
        assert batcher.queue_depth == 0
        assert batcher.in_flight == 0

    run_virtual(main)
