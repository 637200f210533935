"""The runtime server, with every batch's stage times and every request's time in the
batcher written to a file.

The runtime exports batch durations only as a histogram (buckets 10 ms wide at 20-40 ms),
too coarse to see how much a batch's time varies while the server also does the HTTP work
of requests arriving meanwhile, and nothing of a single request. The validation needs both,
so it starts the server through this wrapper, which appends to ``--record``, one line each:

- ``batch SIZE TOKENISE-SECONDS FORWARD-SECONDS``: the model class's two stages (tokenise;
  forward with pooling) of a batch, timed in the worker threads that run them;
- ``req ID SECONDS``: a request's time in ``Runtime.infer`` (queued, batched, run), for the
  requests whose client sent an ``x-request-id`` header. What the client measured beyond
  that is the HTTP path: parsing, validation, encoding, and the event loop's waits.

then runs the unchanged ``batchpilot-runtime``. ``--cpus`` pins the process first, so
every thread the server starts inherits it.

    python -m bench.loop.recorded_server --record FILE [--cpus 1] -- RUNTIME-ARGS...
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class Record:
    """An append-only record file, one line per write, written from several threads."""

    def __init__(self, path: Path) -> None:
        self._out = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._out.write(line + "\n")

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> Record:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def record_stages(model_class: Any, record: Record) -> None:
    """Wrap ``model_class._tokenize`` and ``._forward`` so that each batch writes its size
    and both stages' durations (seconds) to ``record`` as its forward pass finishes.

    The two stages of one batch may run in different threads, and a later batch may overtake
    an earlier one between them, so a batch's tokenise time is kept under its encoding's
    identity until the forward pass receives that very encoding."""
    tokenised: dict[int, float] = {}
    inner_tokenize, inner_forward = model_class._tokenize, model_class._forward

    def tokenize(self: Any, texts: Any) -> Any:
        t0 = time.perf_counter()
        encoded = inner_tokenize(self, texts)
        tokenised[id(encoded)] = time.perf_counter() - t0
        return encoded

    def forward(self: Any, encoded: Any, kind: Any) -> Any:
        t0 = time.perf_counter()
        result = inner_forward(self, encoded, kind)
        took = time.perf_counter() - t0
        tok = tokenised.pop(id(encoded), None)
        if tok is not None:  # None: not a batch (the start-up memory probe)
            size = int(encoded["input_ids"].shape[0])
            record.write(f"batch {size} {tok:.6f} {took:.6f}")
        return result

    model_class._tokenize, model_class._forward = tokenize, forward


def record_requests(runtime_class: Any, record: Record) -> None:
    """Wrap ``runtime_class.infer`` so that each call from a request with an
    ``x-request-id`` header writes ``req ID SECONDS`` to ``record`` as it returns."""
    inner = runtime_class.infer

    async def infer(self: Any, request: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await inner(self, request, *args)
        finally:
            rid = request.headers.get("x-request-id")
            if rid is not None:
                record.write(f"req {rid} {time.perf_counter() - t0:.6f}")

    runtime_class.infer = infer


def read_stages(path: Path, skip_lines: int = 0) -> list[tuple[int, float, float]]:
    """``(size, tokenise seconds, forward seconds)`` per batch, in the order their forward
    passes finished, from a ``--record`` file, ignoring its first ``skip_lines`` lines."""
    batches = []
    for line in path.read_text().splitlines()[skip_lines:]:
        kind, *fields = line.split()
        if kind == "batch":
            size, tok, fwd = fields
            batches.append((int(size), float(tok), float(fwd)))
    return batches


def read_requests(path: Path, skip_lines: int = 0) -> dict[str, float]:
    """Seconds in the batcher per request id, from a ``--record`` file."""
    lines = (line.split() for line in path.read_text().splitlines()[skip_lines:])
    return {fields[1]: float(fields[2]) for fields in lines if fields[0] == "req"}


def line_count(path: Path) -> int:
    """Lines written to ``path`` so far (0 if it does not exist yet)."""
    try:
        with path.open() as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--cpus", help="comma-separated CPUs to run on")
    own = parser.parse_args(args[:split])
    if own.cpus:
        os.sched_setaffinity(0, {int(c) for c in own.cpus.split(",")})
    from batchpilot_runtime.__main__ import main as runtime_main
    from batchpilot_runtime.app import Runtime
    from batchpilot_runtime.backends.hf import TransformersModel

    with Record(own.record) as record:
        record_stages(TransformersModel, record)
        record_requests(Runtime, record)
        return runtime_main(args[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
