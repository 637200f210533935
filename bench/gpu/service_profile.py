"""Stage ``profile``: the service time t(b) of three encoder sizes on the device, written as
emulated-accelerator profiles (``batchpilot_runtime/profiles/*.json``, ``Profile.from_json``).

Each encoder is built from a published config with seeded random weights (random weights
cost the same compute), saved and loaded by the runtime's own ``TransformersModel``, and each
batch is timed as the runtime's device thread runs it when idle: tokenise, forward, pooling,
copy back. Batch sizes are interleaved in a shuffled order each round, so drifts in the
machine's speed spread over all sizes; t(b) is the least-squares line over every timed batch.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench.gpu.boundary import FakeBoundary
from bench.gpu.common import Checks, Context, Json, timed_texts, write_json
from bench.gpu.memory import DRY_RUN_FIGURES
from bench.gpu.models import SHAPES, Shape, build_seeded
from bench.loop.profile import fit_line

from batchpilot_runtime.backends import embedding_kind
from batchpilot_runtime.backends.emulated import Profile
from batchpilot_runtime.backends.hf import CudaMemory, TransformersModel


def device_tag(ctx: Context) -> tuple[str, str]:
    """A file-name tag and a description of the device (``nvidia-h200``, ``NVIDIA H200``)."""
    if ctx.device == "cuda":
        name = torch.cuda.get_device_name(0)
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"), name
    return "cpu-dry-run", "CPU (a dry run: not a profile to use)"


def time_batches(
    model: TransformersModel, batches: tuple[int, ...], rounds: int, words: int, ctx: Context
) -> list[tuple[int, float, float]]:
    """(size, tokenise seconds, forward seconds) of every timed batch, in run order."""
    kind = embedding_kind(True)
    pool = timed_texts(words, max(batches) * 2, seed=11)
    rng = random.Random(5)
    for b in (1, max(batches), 8):  # warm-up: kernels chosen, allocator grown
        model._tokenize_and_forward(pool[:b], kind)
    timed: list[tuple[int, float, float]] = []
    for r in range(rounds):
        order = list(batches)
        rng.shuffle(order)
        for b in order:
            if ctx.left() < 5:
                return timed
            texts = pool[r % 2 * b : r % 2 * b + b]
            t0 = time.perf_counter()
            encoded = model._tokenize(texts)
            t1 = time.perf_counter()
            model._forward(encoded, kind)  # ends with the copy to the host: synchronised
            timed.append((b, t1 - t0, time.perf_counter() - t1))
    return timed


def profile_document(
    shape: Shape, ctx: Context, timed: list[tuple[int, float, float]], load_s: float, cap: int,
    tokens: float, dtype: str,
) -> Json:  # fmt: skip
    """The emulated-accelerator profile of one encoder from its timed batches."""
    sizes = [b for b, _, _ in timed]
    totals = [tok + fwd for _, tok, fwd in timed]
    base, per_item = fit_line(sizes, totals)
    base, per_item = max(base, 0.0), max(per_item, 1e-7)
    ratios = [t / (base + per_item * b) for b, t in zip(sizes, totals, strict=True)]
    _, described = device_tag(ctx)
    return {
        "accelerator": f"one {described} ({dtype}) running an encoder of the {shape.name} shape "
        f"({shape.describe()}), inputs of about {tokens:.0f} tokens",
        "provenance": f"measured by bench/gpu (make gpu-check) on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}: t(b) is the least-squares line over "
        f"{len(timed)} timed batches of sizes {min(sizes)}-{max(sizes)} in shuffled rounds "
        "(tokenise + forward + pooling + copy back in the runtime's TransformersModel, seeded "
        "random weights: the same compute as trained ones); load_seconds: weights from local "
        "disk to a warmed-up model, plus the CUDA start-up of the check's process; max_batch: "
        "the runtime's start-up memory probe; spread: each timed batch over the line, in run "
        "order",
        "measured": True,
        "base_ms": round(base * 1000, 4),
        "per_item_ms": round(per_item * 1000, 5),
        "load_seconds": round(load_s, 1),
        "max_batch": cap,
        "dimensions": shape.hidden,
        "max_length": min(512, shape.max_positions),
        "spread": {"ratios": [round(r, 3) for r in ratios]},
    }


def measure(shape: Shape, ctx: Context, cuda_start_s: float) -> tuple[Json, Json]:
    """Build, load, probe and time one encoder; its profile and the figures behind it."""
    sizes = ctx.sizes
    on_gpu = ctx.device == "cuda"
    dtype = "float16" if on_gpu else "float32"
    folder = Path(ctx.work) / f"profile-{shape.name}"
    build_seeded(shape, folder, Path(ctx.shared["tokenizer"]), dtype=dtype, device=ctx.device)
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    t0 = time.perf_counter()
    model = TransformersModel(folder, "embedding", device, dtype=dtype)
    try:
        model._tokenize_and_forward(["warming up"] * 8, embedding_kind(True))
        load_s = time.perf_counter() - t0 + cuda_start_s
        memory = CudaMemory(device) if on_gpu else FakeBoundary(model, **DRY_RUN_FIGURES).memory()
        cap = model.probe_max_batch(memory, limit=sizes.probe_limit)
        words = sizes.profile_tokens - 2
        tokens = float(
            model._tokenize(timed_texts(words, 4))["attention_mask"].sum(1).float().mean()
        )
        timed = time_batches(model, sizes.profile_batches, sizes.profile_rounds, words, ctx)
    finally:
        model.close()
        del model
        if on_gpu:
            torch.cuda.empty_cache()
    medians = {
        b: round(1000 * statistics.median(t + f for s, t, f in timed if s == b), 3)
        for b in sorted({s for s, _, _ in timed})
    }
    document = profile_document(shape, ctx, timed, load_s, cap, tokens, dtype)
    figures = {
        "median_ms": medians,
        "median_tokenize_ms": {
            b: round(1000 * statistics.median(t for s, t, _ in timed if s == b), 3) for b in medians
        },
        "timed_batches": len(timed),
        "tokens_per_input": tokens,
        "max_batch": cap,
        "load_seconds": round(load_s, 2),
    }
    return document, figures


def run(ctx: Context, checks: Checks) -> Json:
    """Profile each shape while time allows; write ``profile-<shape>-<device>.json``."""
    t0 = time.perf_counter()
    if ctx.device == "cuda":
        torch.zeros(1, device="cuda")  # CUDA start-up, counted once into every load time
    cuda_start_s = time.perf_counter() - t0
    tag, _ = device_tag(ctx)
    results: Json = {"device_tag": tag, "cuda_start_seconds": round(cuda_start_s, 2), "shapes": {}}
    for name in ctx.sizes.profile_shapes:
        if ctx.left() < 15:
            checks.add(f"{name} profiled", False, "not run: the stage's time budget ran out")
            continue
        document, figures = measure(SHAPES[name], ctx, cuda_start_s)
        file = Path(ctx.out) / f"profile-{name}-{tag}.json"
        write_json(file, document)
        parsed: Any = Profile.from_json(file.stem, document)  # the emulated backend reads it
        results["shapes"][name] = {
            **figures,
            "file": file.name,
            "base_ms": parsed.base_ms,
            "per_item_ms": parsed.per_item_ms,
        }
        complete = (
            figures["timed_batches"] == len(ctx.sizes.profile_batches) * ctx.sizes.profile_rounds
        )
        checks.add(
            f"{name} profiled",
            complete,
            f"t(b) = {parsed.base_ms:.3f} + {parsed.per_item_ms:.4f} b ms over "
            f"{figures['timed_batches']} batches, cap {parsed.max_batch}, -> {file.name}",
        )
    return results
