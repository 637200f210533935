"""The open-loop load generator, against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence

import pytest
import uvicorn
from fastapi import FastAPI

from batchpilot_localcluster.loadgen import LoadReport, Outcome, ramps, run_load, steps


def test_steps_schedule_is_piecewise_constant() -> None:
    rate = steps((2.0, 10.0), (5.0, 40.0))
    assert [rate(0), rate(1.99), rate(2.0), rate(4.9), rate(5.0)] == [10, 10, 40, 40, 0]


def test_ramps_schedule_is_piecewise_linear() -> None:
    rate = ramps((0.0, 10.0), (10.0, 110.0), (20.0, 110.0), (30.0, 10.0))
    assert [rate(0), rate(5), rate(10), rate(15), rate(25), rate(30)] == [10, 60, 110, 110, 60, 0]
    with pytest.raises(ValueError, match="time order"):
        ramps((5.0, 1.0), (1.0, 2.0))


def test_p95_ignores_failures_and_handles_empty() -> None:
    outcomes = [Outcome(0, i / 1000, 200) for i in range(1, 101)] + [Outcome(0, 9.0, 429)]
    assert LoadReport.p95_ms(outcomes) == pytest.approx(96.0)
    assert LoadReport.p95_ms([Outcome(0, 1.0, 503)]) is None


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    """A tiny embeddings server that records every input it is sent."""
    seen: list[str] = []
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embed(body: dict[str, str]) -> dict[str, list[float]]:
        seen.append(body["input"])
        return {"embedding": [0.0]}

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(srv.serve())
    while not srv.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}", seen
    srv.should_exit = True
    await task


async def test_every_request_sent_gets_exactly_one_outcome(
    server: tuple[str, list[str]],
) -> None:
    url, seen = server

    async def endpoints() -> Sequence[str]:
        return [url]

    report = await run_load(endpoints, steps((1.0, 200.0)), 1.0, model="m", seed=1)
    assert len(report.outcomes) == len(seen)
    assert all(o.status == 200 for o in report.outcomes)
    assert {o.endpoint for o in report.outcomes} == {url}
    # Poisson at 200/s for 1 s: far from 0 and from a runaway loop.
    assert 120 < len(seen) < 300
    assert report.outcomes == sorted(report.outcomes, key=lambda o: o.sent_at)


async def test_no_endpoint_is_recorded_as_failure_not_dropped() -> None:
    async def none() -> Sequence[str]:
        return []

    report = await run_load(none, steps((0.3, 100.0)), 0.3, model="m")
    assert report.outcomes
    assert {o.status for o in report.outcomes} == {0}
