"""What every stage of the GPU check shares: the run's context, its sizes, and check records."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Json = dict[str, Any]

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
"""The tokenizer files a BERT-vocabulary model needs (the same for every shape here)."""


@dataclass(frozen=True)
class Sizes:
    """How big each stage runs: full on a GPU, small for the CPU dry run."""

    equivalence_texts: int = 24
    probe_limit: int = 1024
    """Largest batch the unrestricted probe tries (the runtime's own limit)."""
    limited_cap: int = 48
    """Batch size the lowered memory limit is sized for (the probe should find about 90%)."""
    profile_shapes: tuple[str, ...] = ("minilm-l6", "bert-base", "bert-large")
    profile_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512)
    profile_rounds: int = 5
    profile_tokens: int = 128
    bench_levels: tuple[int, ...] = (1, 8, 32, 64, 256)
    bench_seconds: float = 8.0
    bench_warmup: float = 2.0
    bench_offline_seconds: float = 3.0
    bench_batch: int = 256
    bench_max_wait_ms: float = 2.0
    bench_processes: int = 4
    """Load-generator processes at high concurrency (one client process saturates first)."""
    torch_threads: int | None = None


GPU_SIZES = Sizes()
DRY_RUN_SIZES = Sizes(
    equivalence_texts=8,
    probe_limit=64,
    limited_cap=12,
    profile_shapes=("tiny-minilm", "tiny-base", "tiny-large"),
    profile_batches=(1, 2, 4, 8),
    profile_rounds=2,
    profile_tokens=24,
    bench_levels=(1, 4),
    bench_seconds=1.5,
    bench_warmup=0.5,
    bench_offline_seconds=0.5,
    bench_batch=8,
    bench_max_wait_ms=2.0,
    bench_processes=2,
    torch_threads=1,
)


@dataclass(frozen=True)
class Context:
    """Everything a stage process needs, passed to it as JSON."""

    dry_run: bool
    device: str
    """``cuda`` for the check, ``cpu`` for the dry run."""
    work: str
    """Scratch folder for models, configs and server logs."""
    out: str
    bundle: str | None
    deadline: float
    """Wall-clock time (``time.time()``) by which the stage should have returned."""
    sizes: Sizes = field(default_factory=Sizes)
    shared: Json = field(default_factory=dict)
    """What earlier stages handed on (``prepare``: the model folder and the tokenizer)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Context:
        raw = json.loads(text)
        sizes: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in raw.pop("sizes").items()
        }
        return cls(sizes=Sizes(**sizes), **raw)

    def left(self) -> float:
        """Seconds left before the deadline."""
        return self.deadline - time.time()


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Checks:
    """The pass/fail findings of one stage, each with the figures behind it."""

    def __init__(self) -> None:
        self.items: list[Check] = []

    def add(self, name: str, ok: bool, detail: str) -> bool:
        """Record one finding and print it; returns ``ok``."""
        self.items.append(Check(name, bool(ok), detail))
        say(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")
        return bool(ok)

    def to_json(self) -> list[Json]:
        return [asdict(c) for c in self.items]


def say(message: str) -> None:
    """Progress on stdout, flushed at once (the check's log is its stdout)."""
    print(message, file=sys.stdout, flush=True)


def write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def timed_texts(words: int, count: int, *, seed: int = 0) -> list[str]:
    """``count`` distinct texts of ``words`` common one-token words each (about ``words + 2``
    tokens with the BERT vocabulary), so a batch's token count is known in advance."""
    import random

    rng = random.Random(seed)
    vocab = ONE_TOKEN_WORDS
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(count)]


ONE_TOKEN_WORDS = (
    "the", "a", "model", "batch", "queue", "request", "server", "size", "target", "node",
    "image", "vector", "text", "quick", "brown", "fox", "over", "lazy", "dog", "river", "bank",
    "under", "bright", "morning", "light", "while", "every", "of", "forward", "pass", "on",
    "two", "busy", "day", "night", "house", "water", "green", "small", "large", "time", "city",
)  # fmt: skip
