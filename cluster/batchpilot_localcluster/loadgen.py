"""An open-loop load generator for the demo and the end-to-end tests.

Requests arrive as a Poisson process whose rate follows a schedule, independently of how fast
the server answers (an open loop: a slow server builds a queue instead of slowing the load,
which is what real traffic does). Each request goes to one of the current endpoints, chosen
round-robin; the endpoints can change while the load runs (pods come and go).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

RateSchedule = Callable[[float], float]
"""Requests per second as a function of seconds since the load started."""

EndpointSource = Callable[[], Awaitable[Sequence[str]]]
"""Returns the base URLs (``http://127.0.0.5:8080``) that currently take traffic."""


@dataclass
class Outcome:
    """One request's fate."""

    sent_at: float  # seconds since the load started
    latency_s: float
    status: int  # HTTP status, or 0 when no answer came back
    endpoint: str = ""  # the base URL it was sent to ("" when it was never sent)


@dataclass
class LoadReport:
    """Everything the load saw, in arrival order."""

    outcomes: list[Outcome] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[Outcome]:
        """Outcomes of the requests sent in ``[start, end)``."""
        return [o for o in self.outcomes if start <= o.sent_at < end]

    @staticmethod
    def p95_ms(outcomes: Sequence[Outcome]) -> float | None:
        """95th percentile latency of the successful requests, in milliseconds."""
        ok = sorted(o.latency_s for o in outcomes if o.status == 200)
        if not ok:
            return None
        return ok[min(len(ok) - 1, int(0.95 * len(ok)))] * 1000.0


def steps(*levels: tuple[float, float]) -> RateSchedule:
    """A piecewise-constant schedule from ``(until_seconds, rate)`` pairs."""

    def rate(t: float) -> float:
        for until, value in levels:
            if t < until:
                return value
        return 0.0

    return rate


def ramps(*knots: tuple[float, float]) -> RateSchedule:
    """A piecewise-linear schedule through ``(seconds, rate)`` knots, in time order; 0 before
    the first knot and after the last."""
    if any(later[0] < earlier[0] for earlier, later in itertools.pairwise(knots)):
        raise ValueError(f"ramps: knots must be in time order, got {knots}")

    def rate(t: float) -> float:
        for (t0, r0), (t1, r1) in itertools.pairwise(knots):
            if t0 <= t < t1:
                return r0 + (r1 - r0) * (t - t0) / (t1 - t0)
        return 0.0

    return rate


async def run_load(
    endpoints: EndpointSource,
    rate: RateSchedule,
    duration_s: float,
    *,
    model: str,
    texts: Sequence[str] = ("batchpilot groups concurrent requests into batches.",),
    timeout_s: float = 30.0,
    max_in_flight: int = 2000,
    seed: int = 0,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> LoadReport:
    """Send embedding requests for ``duration_s`` seconds at the scheduled rate.

    Bounded: it stops sending at ``duration_s`` and waits at most ``timeout_s`` more for the
    answers; at most ``max_in_flight`` requests are outstanding (beyond that, arrivals are
    recorded as status 0 instead of piling up in the client).
    """
    rng = random.Random(seed)
    report = LoadReport()
    start = time.monotonic()
    in_flight: set[asyncio.Task[None]] = set()
    urls: Sequence[str] = await endpoints()
    refreshed = start
    turn = 0
    # base64, as the official OpenAI client asks by default: a vector is 4 bytes a dimension
    # instead of about 20 characters of JSON. Bodies are encoded once, not per request.
    bodies = [
        json.dumps({"model": model, "input": text, "encoding_format": "base64"}).encode()
        for text in texts
    ]
    headers = {"content-type": "application/json"}
    # aiohttp rather than httpx: less client CPU per request, which matters at hundreds of
    # requests per second from one process on a small machine.
    connector = aiohttp.TCPConnector(limit=max_in_flight, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(url: str, sent_at: float, body: bytes) -> None:
            begun = time.monotonic()
            try:
                async with session.post(f"{url}/v1/embeddings", data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            outcome = Outcome(sent_at, time.monotonic() - begun, status, url)
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

        next_at = 0.0
        while True:
            now = time.monotonic() - start
            if now >= duration_s:
                break
            if now - (refreshed - start) > 1.0:  # pick up new or removed pods once a second
                urls = await endpoints()
                refreshed = time.monotonic()
            current = rate(now)
            if current <= 0:
                next_at = now + 0.1
                await asyncio.sleep(0.1)
                continue
            next_at += rng.expovariate(current)
            delay = next_at - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            if not urls or len(in_flight) >= max_in_flight:
                report.outcomes.append(Outcome(next_at, 0.0, 0))
                continue
            url = urls[turn % len(urls)]
            turn += 1
            task = asyncio.create_task(one(url, next_at, bodies[turn % len(bodies)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=timeout_s)
    report.outcomes.sort(key=lambda o: o.sent_at)
    return report
