"""Stage ``memory``: the start-up memory probe's batch cap against real allocations, and a
forced out-of-memory that the batcher must split and retry until every request is answered.

1. The probe as the runtime runs it at start-up, on the whole device.
2. The allocator limited to the model's weights plus about ``limited_cap`` longest inputs;
   the probe again: a forward pass of the cap it finds must fit (peak within the limit), one
   of twice the cap must not (else the probe wastes more than half the memory).
3. Under that limit, a batcher without the cap gets twice the cap of longest inputs at once:
   the first batch runs out of memory, is split and retried, and every input gets the same
   vector as when run alone in a small batch.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench.gpu.boundary import Boundary, CudaBoundary, FakeBoundary, peak_of
from bench.gpu.common import ONE_TOKEN_WORDS, Checks, Context, Json

from batchpilot_contract.batching import BatchingConfig
from batchpilot_runtime.backends import EmbeddingOutput, embedding_kind
from batchpilot_runtime.backends.hf import MEMORY_HEADROOM, TransformersModel
from batchpilot_runtime.batcher import Batch, Batcher, OutOfMemory

DRY_RUN_FIGURES = {"total": 10_000_000, "weights": 1_000, "per_item": 1_000}
"""The dry run's modelled device: 10 MB, 1 kB of weights, 1 kB per longest input."""


def longest_inputs(model: TransformersModel, n: int) -> list[str]:
    """``n`` distinct texts that fill ``max_length`` tokens once truncated."""
    words = ONE_TOKEN_WORDS
    return [
        f"{words[i % len(words)]} {words[(i // len(words)) % len(words)]} "
        + "hello " * model.max_length
        for i in range(n)
    ]


def encoded(model: TransformersModel, n: int) -> dict[str, Any]:
    one = model._tokenize(["hello " * model.max_length])
    return {k: v.expand(n, -1).contiguous() for k, v in one.items()}


def fits(model: TransformersModel, boundary: Boundary, n: int) -> tuple[bool, int | None]:
    """Whether a forward pass of ``n`` longest inputs runs, and its peak bytes if it did."""
    try:
        return True, peak_of(model, boundary.memory(), encoded(model, n))
    except OutOfMemory:
        return False, None


async def split_and_answer(model: TransformersModel, texts: list[str], chunk: int) -> Json:
    """Submit all ``texts`` at once to a batcher that may exceed memory; compare each answer
    with the same text's vector from batches of ``chunk``."""
    kind = embedding_kind(True)
    reference: list[Any] = []
    for i in range(0, len(texts), chunk):
        reference += await model.run(Batch(kind, texts[i : i + chunk]))
    config = BatchingConfig.model_validate(
        {"maxBatchSize": len(texts), "maxWaitMs": 200, "maxQueue": len(texts) * 2}
    )
    batcher = Batcher(model, config, max_batch_cap=None)
    batcher.start()
    try:
        outputs = await asyncio.gather(*batcher.submit_many(kind, texts), return_exceptions=True)
    finally:
        await batcher.aclose()
    answered = [o for o in outputs if isinstance(o, EmbeddingOutput)]
    worst = 1.0
    for out, ref in zip(outputs, reference, strict=True):
        if isinstance(out, EmbeddingOutput) and isinstance(ref, EmbeddingOutput):
            worst = min(worst, float(np.dot(out.vector, ref.vector)))
    return {
        "submitted": len(texts),
        "answered": len(answered),
        "errors": sorted({type(o).__name__ for o in outputs if isinstance(o, BaseException)}),
        "splits": batcher.stats.splits,
        "batches": batcher.stats.batches,
        "items_failed": batcher.stats.items_failed,
        "min_cosine_to_small_batches": worst,
    }


def run(ctx: Context, checks: Checks) -> Json:
    """Probe, check the cap against allocations, then force and survive an out-of-memory."""
    sizes = ctx.sizes
    device = torch.device("cuda", 0) if ctx.device == "cuda" else torch.device("cpu")
    model = TransformersModel(Path(ctx.shared["model"]), "embedding", device)
    boundary: Boundary
    if ctx.device == "cuda":
        boundary = CudaBoundary(model)
    else:
        boundary = FakeBoundary(model, **DRY_RUN_FIGURES)
    found: Json = {
        "dtype": str(next(model.model.parameters()).dtype),
        "max_length": model.max_length,
    }
    try:
        model._forward(encoded(model, 2), None)  # kernels and allocator warm before figures
        started = time.perf_counter()
        full_cap = model.probe_max_batch(boundary.memory(), limit=sizes.probe_limit)
        found["full_device"] = {
            "cap": full_cap,
            "probe_limit": sizes.probe_limit,
            "seconds": round(time.perf_counter() - started, 2),
            "peak_at_cap": fits(model, boundary, full_cap)[1],
            "capacity": boundary.memory().capacity(),
        }
        checks.add(
            "probe on the whole device",
            full_cap >= 1,
            f"cap {full_cap} of limit {sizes.probe_limit}",
        )

        rest = boundary.at_rest()
        small, big = fits(model, boundary, 4)[1], fits(model, boundary, 8)[1]
        if small is None or big is None:
            raise OutOfMemory("batches of 4 and 8 longest inputs do not fit the whole device")
        per_item = max(1, (big - small) // 4)
        limit = rest + max(big - rest, per_item * sizes.limited_cap)
        boundary.limit(limit)
        cap = model.probe_max_batch(boundary.memory(), limit=sizes.probe_limit)
        ok_cap, peak_cap = fits(model, boundary, cap)
        ok_double, peak_double = fits(model, boundary, 2 * cap)
        found["limited"] = {
            "limit_bytes": limit, "at_rest_bytes": rest, "per_item_bytes": per_item,
            "headroom": MEMORY_HEADROOM, "cap": cap, "peak_at_cap": peak_cap,
            "double_fits": ok_double, "peak_at_double": peak_double,
        }  # fmt: skip
        checks.add(
            "cap fits a real allocation",
            ok_cap and peak_cap is not None and peak_cap <= limit,
            f"cap {cap}: peak {peak_cap} of {limit} bytes allowed",
        )
        checks.add(
            "twice the cap does not fit",
            not ok_double or (peak_double is not None and peak_double > limit),
            f"batch {2 * cap}: {'ran, peak ' + str(peak_double) if ok_double else 'out of memory'}",
        )
        texts = longest_inputs(model, 2 * cap)
        split = asyncio.run(split_and_answer(model, texts, max(1, cap // 2)))
        found["split"] = split
        checks.add(
            "out-of-memory batch split and answered",
            split["splits"] >= 1 and split["answered"] == split["submitted"],
            f"{split['answered']}/{split['submitted']} answered after {split['splits']} split(s)",
        )
        checks.add(
            "split answers equal small-batch answers",
            split["min_cosine_to_small_batches"] >= 0.999,
            f"min cosine {split['min_cosine_to_small_batches']:.6f}",
        )
    finally:
        boundary.limit(None)
        model.close()
    return found
