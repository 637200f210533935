"""Stage ``equivalence``: the runtime with ``--device auto`` serves on every visible GPU,
says so in ``/stats``, and its embeddings match the CPU's within stated tolerances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench.gpu.common import Checks, Context, Json, timed_texts
from bench.gpu.server import runtime_server

TOLERANCES = {
    # Same weights, same maths: only the order of floating-point sums differs (TF32 off).
    "float32": {"max_abs": 1e-4, "min_cosine": 0.99999},
    # Half-precision activations: about three significant digits survive six layers.
    "float16": {"max_abs": 1e-2, "min_cosine": 0.999},
}
"""Largest element difference and smallest cosine between a served vector and the CPU's
float32 vector of the same text (vectors are L2-normalised, as served by default)."""
SEPARATION = 0.1
"""The device difference must stay under this share of the closest two texts' distance, so
the tolerance means something even for random weights, whose vectors lie close together."""


def texts(count: int) -> list[str]:
    """Short and long sentences, and repeats of one word, so padding is exercised."""
    fixed = [
        "A man is eating food.",
        "Kubernetes schedules pods onto nodes that have room for them.",
        "hi",
        "The quick brown fox jumps over the lazy dog " * 6,
    ]
    return (fixed + timed_texts(12, count, seed=3))[:count]


def cpu_reference(model: Path, inputs: list[str]) -> npt.NDArray[np.float64]:
    """The model run directly with transformers on the CPU in float32: mean pooling over the
    attention mask, L2-normalised (what the runtime serves)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    net: Any = AutoModel.from_pretrained(str(model), local_files_only=True, dtype=torch.float32)
    net = net.eval()
    with torch.inference_mode():
        enc = tokenizer(inputs, padding=True, truncation=True, return_tensors="pt")
        hidden = net(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    return np.asarray(pooled.double().numpy())


def compare(served: npt.NDArray[np.float64], expected: npt.NDArray[np.float64]) -> Json:
    """Element and cosine differences per text, and the closest two texts' distance."""
    diff = np.abs(served - expected)
    cosine = (served * expected).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1)
    )
    pair = np.linalg.norm(expected[:, None, :] - expected[None, :, :], axis=-1)
    pair[np.eye(len(expected), dtype=bool)] = np.inf
    return {
        "max_abs_diff": float(diff.max()),
        "min_cosine": float(cosine.min()),
        "max_l2_diff": float(np.linalg.norm(served - expected, axis=1).max()),
        "closest_texts_l2": float(pair.min()),
    }


def expected_devices(device: str) -> list[str]:
    import torch

    if device == "cuda":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def run(ctx: Context, checks: Checks) -> Json:
    """Serve the model in float32 and in float16 and compare each with the CPU."""
    model = Path(ctx.shared["model"])
    inputs = texts(ctx.sizes.equivalence_texts)
    expected = cpu_reference(model, inputs)
    devices = expected_devices(ctx.device)
    results: Json = {"texts": len(inputs), "tolerances": TOLERANCES, "expected_devices": devices}
    for dtype, tolerance in TOLERANCES.items():
        if ctx.left() < 20:
            checks.add(f"{dtype} served", False, "not run: the stage's time budget ran out")
            continue
        with runtime_server(
            model, Path(ctx.work), name=f"equivalence-{dtype}", dtype=dtype,
            batching={"maxBatchSize": 64, "maxWaitMs": 5}, threads=ctx.sizes.torch_threads,
            ready_timeout=max(10.0, ctx.left() - 10),
        ) as server:  # fmt: skip
            stats = server.stats()
            served = np.asarray(server.embed(inputs), dtype=np.float64)
            singles = np.asarray([server.embed([t])[0] for t in inputs[:4]], dtype=np.float64)
        workers = stats["workers"]
        seen = [w["device"] for w in workers]
        caps = [w["max_batch_cap"] for w in workers]
        found = compare(served, expected)
        found["alone_vs_batched_max_abs"] = float(np.abs(singles - served[:4]).max())
        results[dtype] = {
            **found,
            "startup_seconds": round(server.startup_seconds, 2),
            "workers": workers,
            "device_info": stats.get("model"),
        }
        checks.add(f"{dtype}: one worker per device", seen == devices, f"/stats workers on {seen}")
        on_gpu = ctx.device == "cuda"
        checks.add(
            f"{dtype}: memory probe ran",
            all(isinstance(c, int) and c >= 1 for c in caps) if on_gpu else caps == [None],
            f"max_batch_cap per worker {caps} (a GPU worker probes at start; a CPU one does not)",
        )
        within = (
            found["max_abs_diff"] <= tolerance["max_abs"]
            and found["min_cosine"] >= tolerance["min_cosine"]
        )
        checks.add(
            f"{dtype}: matches the CPU",
            within,
            f"max |diff| {found['max_abs_diff']:.2e} (<= {tolerance['max_abs']:.0e}), "
            f"min cosine {found['min_cosine']:.7f} (>= {tolerance['min_cosine']})",
        )
        checks.add(
            f"{dtype}: difference far below the texts' spacing",
            found["max_l2_diff"] < SEPARATION * found["closest_texts_l2"],
            f"max L2 diff {found['max_l2_diff']:.2e}, closest two texts "
            f"{found['closest_texts_l2']:.2e} apart",
        )
    return results
