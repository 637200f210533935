"""Stage ``benchmark``: the runtime benchmark (``bench/runtime.py``) on the device.

The offline limit is the runtime's own model class batched in a tight loop in this process
(tokenise + forward + pooling, ``bench_batch`` texts a pass, on the same GPU as the server,
the server idle meanwhile), measured right before each level; one single-item forward is the
floor for one client's latency. The server runs in its own process with ``--device auto``;
the load generator runs on the same machine (``bench.gpu.loadgen``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from bench.gpu.common import Checks, Context, Json, say
from bench.gpu.loadgen import closed_loop
from bench.gpu.server import runtime_server
from bench.runtime import corpus

from batchpilot_runtime.backends import embedding_kind
from batchpilot_runtime.backends.hf import TransformersModel


class Offline:
    """The offline limit: batches of the corpus through the runtime's model, no server."""

    def __init__(self, model: TransformersModel, texts: list[str], batch: int) -> None:
        self.model, self.texts, self.batch = model, texts, batch
        self.kind = embedding_kind(True)
        for i in range(3):
            self.forward(i)

    def forward(self, i: int) -> None:
        chunk = [self.texts[(i + k) % len(self.texts)] for k in range(self.batch)]
        self.model._tokenize_and_forward(chunk, self.kind)

    def items_per_s(self, seconds: float) -> float:
        items, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            self.forward(i)
            items += self.batch
            i += self.batch
        return items / (time.perf_counter() - start)

    def single_forward_ms(self, n: int = 40) -> float:
        """Median latency of one single-item pass (tokenising included)."""
        times = []
        for k in range(n):
            t0 = time.perf_counter()
            self.model._tokenize_and_forward([self.texts[k]], self.kind)
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)


def run(ctx: Context, checks: Checks) -> Json:
    """The closed-loop levels against the offline limit; the two headline ratios."""
    sizes = ctx.sizes
    model_dir = Path(ctx.shared["model"])
    texts = corpus(4096)
    device = torch.device("cuda", 0) if ctx.device == "cuda" else torch.device("cpu")
    if sizes.torch_threads:
        torch.set_num_threads(sizes.torch_threads)
    model = TransformersModel(model_dir, "embedding", device)
    offline = Offline(model, texts, sizes.bench_batch)
    single_ms = offline.single_forward_ms()
    per_level = sizes.bench_seconds + sizes.bench_warmup + sizes.bench_offline_seconds + 2
    levels: list[Json] = []
    skipped: list[int] = []
    batching = {
        "maxBatchSize": sizes.bench_batch,
        "maxWaitMs": sizes.bench_max_wait_ms,
        "maxQueue": 8192,
    }
    try:
        with runtime_server(
            model_dir, Path(ctx.work), name="benchmark", batching=batching,
            threads=sizes.torch_threads, ready_timeout=max(10.0, ctx.left() - per_level),
        ) as server:  # fmt: skip
            startup = server.startup_seconds
            for clients in sizes.bench_levels:
                if ctx.left() < per_level + 5:
                    skipped.append(clients)
                    continue
                limit = offline.items_per_s(sizes.bench_offline_seconds)
                procs = 1 if clients == 1 else sizes.bench_processes
                level = closed_loop(
                    server.url, texts, clients, sizes.bench_seconds, sizes.bench_warmup, procs
                )
                level["offline_items_per_s"] = limit
                levels.append(level)
                say(
                    f"  {clients} clients: {level['throughput']:.0f} items/s (offline "
                    f"{limit:.0f}), p50 {level['p50_ms']:.2f} ms, "
                    f"batch {level['avg_batch_size']:.1f}"
                )
    finally:
        single_ms = (single_ms + offline.single_forward_ms()) / 2
        model.close()
    found: Json = {
        "batch": sizes.bench_batch,
        "max_wait_ms": sizes.bench_max_wait_ms,
        "seconds": sizes.bench_seconds,
        "warmup": sizes.bench_warmup,
        "server_startup_seconds": round(startup, 2),
        "offline": {
            "single_forward_ms": single_ms,
            "items_per_s": statistics.mean(lv["offline_items_per_s"] for lv in levels)
            if levels
            else None,
        },
        "levels": levels,
        "skipped_levels": skipped,
    }
    checks.add(
        "every level ran",
        not skipped,
        f"ran {[lv['concurrency'] for lv in levels]}"
        + (f", skipped {skipped} (time)" if skipped else ""),
    )
    bad = {lv["concurrency"]: lv["statuses"] for lv in levels if set(lv["statuses"]) - {200}}
    checks.add("every answer was 200", not bad, f"other statuses: {bad}" if bad else "all 200")
    if levels:
        top, one = levels[-1], levels[0]
        found["saturation_ratio"] = top["throughput"] / top["offline_items_per_s"]
        found["p50_one_client_minus_forward_ms"] = one["p50_ms"] - single_ms
        # Reported, not judged: the targets (>= 0.9, <= 3 ms) are the benchmark's, and the
        # report shows them; a check that asserted speed would fail on a busy machine.
        checks.add(
            "throughput measured",
            all(lv["throughput"] > 0 for lv in levels),
            f"saturation {found['saturation_ratio']:.2f} of the offline limit at "
            f"{top['concurrency']} clients; p50 at one client {one['p50_ms']:.2f} ms vs one "
            f"forward {single_ms:.2f} ms",
        )
    return found
