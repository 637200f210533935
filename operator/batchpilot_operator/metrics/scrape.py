"""Scrape a set of pods' ``/metrics`` concurrently: a per-pod timeout, a concurrency
limit, and a pod that does not answer recorded as *missing*, never as zero load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from batchpilot_operator.metrics.parse import MetricsParseError, PodSample, parse_metrics


@dataclass(frozen=True)
class Scrape:
    """The pods' metrics at one instant: the samples that came back, and the pods that did
    not answer (or answered something unusable) with the reason."""

    time: float
    samples: Mapping[str, PodSample]
    missing: Mapping[str, str] = field(default_factory=dict)

    @property
    def pods(self) -> frozenset[str]:
        """Every pod that was asked."""
        return frozenset(self.samples) | frozenset(self.missing)


async def scrape_pods(
    targets: Mapping[str, str],
    *,
    timeout_s: float = 2.0,
    concurrency: int = 16,
    client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Scrape:
    """Fetch ``targets`` (pod name -> full ``/metrics`` URL) concurrently, at most
    ``concurrency`` at once, each bounded by ``timeout_s``. A pod that times out, refuses,
    answers non-200 or unparseable text is recorded in ``missing`` with the reason."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    limit = asyncio.Semaphore(concurrency)
    owns_client = client is None
    http = client if client is not None else httpx.AsyncClient(timeout=timeout_s)

    async def one(pod: str, url: str) -> PodSample | str:
        async with limit:
            try:
                async with asyncio.timeout(timeout_s):
                    resp = await http.get(url, timeout=timeout_s)
            except TimeoutError:
                return f"timed out after {timeout_s:g}s"
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            at = clock()
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}"
        try:
            return parse_metrics(resp.text, pod=pod, at=at)
        except MetricsParseError as exc:
            return str(exc)

    try:
        pods = list(targets)
        results = await asyncio.gather(*(one(p, targets[p]) for p in pods))
    finally:
        if owns_client:
            await http.aclose()
    samples: dict[str, PodSample] = {}
    missing: dict[str, str] = {}
    for pod, result in zip(pods, results, strict=True):
        if isinstance(result, PodSample):
            samples[pod] = result
        else:
            missing[pod] = result
    return Scrape(time=clock(), samples=samples, missing=missing)
