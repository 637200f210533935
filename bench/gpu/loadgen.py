"""Closed-loop load from several processes: at hundreds of clients one Python process
saturates before a GPU-backed server does, so the clients are spread over processes.

Each process runs its share of the clients with the runtime benchmark's minimal keep-alive
HTTP/1.1 client (``bench.runtime.Connection``), one text per request, and keeps the
latencies of requests that start after the warm-up and end before the stop time, which are
wall-clock instants shared by all the processes.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
from bench.runtime import Connection


def client_share(
    host: str, port: int, texts: list[str], clients: int, first: int, stride: int,
    measure_from: float, stop: float,
) -> dict[str, Any]:  # fmt: skip
    """Run ``clients`` closed-loop clients until ``stop`` (wall clock); their latencies."""
    bodies = [json.dumps({"input": t}).encode() for t in texts]
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def client(k: int) -> None:
        conn = Connection(host, port)
        i = first + k * stride
        try:
            while time.time() < stop:
                t0 = time.time()
                status, _ = await conn.post("/v1/embeddings", bodies[i % len(bodies)])
                t1 = time.time()
                i += clients * stride
                if t0 >= measure_from and t1 <= stop:
                    latencies.append(t1 - t0)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(client(k) for k in range(clients)))

    asyncio.run(main())
    return {"latencies": latencies, "statuses": statuses}


def closed_loop(
    url: str, texts: list[str], clients: int, seconds: float, warmup: float, processes: int
) -> dict[str, Any]:
    """One level of load: throughput, latency quantiles and batching from ``/stats``, in
    ``bench/runtime.py``'s result format."""
    host, port = url.removeprefix("http://").split(":")
    procs = max(1, min(processes, clients))
    shares = [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]
    before = httpx.get(url + "/stats", timeout=30).json()
    begin = time.time() + 0.5 + 0.2 * procs  # time for the processes to start
    measure_from, stop = begin + warmup, begin + warmup + seconds
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(procs, mp_context=context) as pool:
        futures = [
            pool.submit(client_share, host, int(port), texts, n, p, procs, measure_from, stop)
            for p, n in enumerate(shares)
        ]
        parts = [f.result() for f in futures]
    after = httpx.get(url + "/stats", timeout=30).json()
    elapsed = time.time() - begin
    latencies = sorted(x for part in parts for x in part["latencies"])
    statuses: dict[int, int] = {}
    for part in parts:
        for code, n in part["statuses"].items():
            statuses[int(code)] = statuses.get(int(code), 0) + n
    busy_s = (
        after["avg_batch_ms"] * after["batches"] - before["avg_batch_ms"] * before["batches"]
    ) / 1000
    batches = after["batches"] - before["batches"]
    items = after["items"] - before["items"]

    def q(p: float) -> float:
        if not latencies:
            return float("nan")
        return 1000 * float(latencies[min(len(latencies) - 1, int(p * len(latencies)))])

    return {
        "concurrency": clients,
        "processes": procs,
        "requests": len(latencies),
        "statuses": statuses,
        "throughput": statuses.get(200, 0) / seconds,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "avg_batch_size": items / batches if batches else 0.0,
        "avg_batch_ms": 1000 * busy_s / batches if batches else 0.0,
        "model_busy": busy_s / elapsed if elapsed > 0 else 0.0,
    }
