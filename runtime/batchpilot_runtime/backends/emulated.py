"""An emulated accelerator: the real runtime around a model whose batches are timed waits.

``--model emulated://NAME`` serves the service-time profile ``NAME`` (a JSON file shipped in
``batchpilot_runtime/profiles/``) instead of a model. Everything but the forward pass is the
real runtime: HTTP, the batcher, the queue, deadlines, metrics, config reload and drain. A
batch of ``b`` items holds the emulated device for ``t(b) = base + per_item * b`` scaled by
the profile's spread, and returns well-formed outputs: a deterministic vector per text (the
same text always gives the same vector), a score per label, or a relevance score per
(query, document) pair; images are scored, or embedded, from their pixels. Start-up waits the
profile's model-load time before the server turns ready, so a new replica is as slow to serve
as a real one. No torch, and almost no CPU per batch, so a dozen replicas share two cores.

The device shows as ``emulated:NAME`` in ``/stats``, in the logs and in the
``batchpilot_device_info`` metric; nothing here pretends to be a GPU.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from batchpilot_runtime.backends import (
    CLASSIFICATION_KIND,
    IMAGE_KIND,
    RERANK_KIND,
    ClassificationOutput,
    EmbeddingOutput,
    ModelInfo,
    RerankOutput,
    Task,
    embedding_kind,
    multimodal_kind,
)
from batchpilot_runtime.batcher import Batch

log = logging.getLogger(__name__)

IMAGE_SHAPE = (3, 224, 224)
"""The preprocessed image an emulated image model takes (a ViT-Base's, as CLIP ViT-B/32's)."""
IMAGE_TASKS = ("image-classification", "multimodal-embedding")

SCHEME = "emulated://"
"""Model URIs with this scheme select an emulated accelerator: ``emulated://NAME``."""


_REQUIRED = object()


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the profile and the problem."""


@dataclass(frozen=True)
class Spread:
    """How a batch's time scatters around ``t(b)``, as a factor with median 1.

    Either a recording (``ratios``, in the order the batches ran: replayed from a random
    point, so slow spells last as long as they did) or, for a profile that was not measured,
    a log-normal factor with standard deviation ``sigma`` whose logarithm follows an AR(1)
    process with lag-one ``correlation`` (slow batches come in spells, not alone).
    """

    ratios: tuple[float, ...] = ()
    sigma: float = 0.0
    correlation: float = 0.0

    def sampler(self, rng: random.Random) -> SpreadSampler:
        return SpreadSampler(self, rng)


class SpreadSampler:
    """Draws one factor per batch from a :class:`Spread` (one sampler per device)."""

    def __init__(self, spread: Spread, rng: random.Random) -> None:
        self.spread = spread
        self._rng = rng
        self._next = rng.randrange(len(spread.ratios)) if spread.ratios else 0
        self._log = 0.0

    def draw(self) -> float:
        spread = self.spread
        if spread.ratios:
            ratio = spread.ratios[self._next % len(spread.ratios)]
            self._next += 1
            return ratio
        if spread.sigma <= 0:
            return 1.0
        rho = spread.correlation
        # Stationary AR(1): the log keeps variance sigma^2 whatever the correlation.
        noise = self._rng.gauss(0.0, spread.sigma * math.sqrt(1.0 - rho * rho))
        self._log = rho * self._log + noise
        return math.exp(self._log)


@dataclass(frozen=True)
class Profile:
    """A service-time profile: what one device of some kind takes for a batch."""

    name: str
    accelerator: str
    """What was (or would be) measured, in words: the device and the model."""
    provenance: str
    """Where the numbers come from: a measurement (command, machine, date) or an estimate."""
    measured: bool
    base_ms: float
    per_item_ms: float
    load_seconds: float
    """Process start to ready: model load and warm-up on the real thing."""
    max_batch: int | None = None
    """The largest batch that fits in device memory (None: no cap)."""
    dimensions: int = 384
    labels: tuple[str, ...] = ("negative", "positive")
    max_length: int = 512
    spread: Spread = Spread()

    def batch_seconds(self, size: int) -> float:
        """``t(b)`` at the median, in seconds."""
        return (self.base_ms + self.per_item_ms * size) / 1000.0

    @classmethod
    def from_json(cls, name: str, document: Any) -> Profile:
        """Parse a profile document; a bad one raises :class:`ProfileError` naming the key."""
        if not isinstance(document, dict):
            raise ProfileError(f"profile {name!r}: expected a JSON object")
        spread = document.get("spread") or {}
        if not isinstance(spread, dict):
            raise ProfileError(f"profile {name!r}: spread must be an object")

        def value(source: dict[str, Any], key: str, kind: Any, default: Any = _REQUIRED) -> Any:
            if key not in source:
                if default is _REQUIRED:
                    raise ProfileError(f"profile {name!r}: missing key {key!r}")
                return default
            raw = source[key]
            try:
                if kind is bool:
                    if not isinstance(raw, bool):
                        raise TypeError("expected true or false")
                    return raw
                if raw is None or isinstance(raw, bool):
                    raise TypeError(f"expected a {kind.__name__}")
                return kind(raw)
            except (TypeError, ValueError) as exc:
                raise ProfileError(f"profile {name!r}: {key}: {exc}") from None

        max_batch = document.get("max_batch")
        ratios = spread.get("ratios", [])
        labels = document.get("labels", list(cls.labels))
        if not isinstance(ratios, list) or not isinstance(labels, list):
            raise ProfileError(f"profile {name!r}: spread.ratios and labels must be lists")
        profile = cls(
            name=name,
            accelerator=value(document, "accelerator", str),
            provenance=value(document, "provenance", str),
            measured=value(document, "measured", bool),
            base_ms=value(document, "base_ms", float),
            per_item_ms=value(document, "per_item_ms", float),
            load_seconds=value(document, "load_seconds", float),
            max_batch=None if max_batch is None else value(document, "max_batch", int),
            dimensions=value(document, "dimensions", int, 384),
            labels=tuple(str(x) for x in labels),
            max_length=value(document, "max_length", int, 512),
            spread=Spread(
                ratios=tuple(value({"r": r}, "r", float) for r in ratios),
                sigma=value(spread, "sigma", float, 0.0),
                correlation=value(spread, "correlation", float, 0.0),
            ),
        )
        ratios = list(profile.spread.ratios)
        problems = [
            what
            for what, bad in (
                ("base_ms must be >= 0", profile.base_ms < 0),
                ("per_item_ms must be > 0", profile.per_item_ms <= 0),
                ("load_seconds must be >= 0", profile.load_seconds < 0),
                ("max_batch must be >= 1", profile.max_batch is not None and profile.max_batch < 1),
                ("dimensions must be >= 1", profile.dimensions < 1),
                ("labels must not be empty", not profile.labels),
                ("spread.ratios must be > 0", any(r <= 0 for r in ratios)),
                ("spread.correlation must be in [0, 1)", not 0 <= profile.spread.correlation < 1),
            )
            if bad
        ]
        if problems:
            raise ProfileError(f"profile {name!r}: {'; '.join(problems)}")
        return profile


def profile_names() -> list[str]:
    """The profiles shipped with the runtime."""
    folder = resources.files("batchpilot_runtime") / "profiles"
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def load_profile(uri_or_name: str) -> Profile:
    """The shipped profile named by ``emulated://NAME`` (or ``NAME``)."""
    name = uri_or_name.removeprefix(SCHEME).strip("/")
    if name not in profile_names():
        raise ProfileError(
            f"{SCHEME}{name}: no such profile; shipped profiles: {', '.join(profile_names())}"
        )
    text = (resources.files("batchpilot_runtime") / "profiles" / f"{name}.json").read_text()
    return Profile.from_json(name, json.loads(text))


def load_profile_file(path: Path) -> Profile:
    """A profile from a JSON file (for tools and tests that make their own)."""
    return Profile.from_json(path.stem, json.loads(path.read_text()))


def _seed(text: str | bytes) -> int:
    data = text.encode() if isinstance(text, str) else text
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _tokens(text: str) -> int:
    """About what a WordPiece tokeniser counts: words, plus the two special tokens."""
    return len(text.split()) + 2


class EmulatedModel:
    """One emulated device serving ``task`` with ``profile``'s timing."""

    def __init__(self, profile: Profile, task: Task, *, seed: int | None = None) -> None:
        self.profile = profile
        self.task = task
        self._info = ModelInfo(
            task=task,
            device=f"emulated:{profile.name}",
            dimensions=profile.dimensions if "embedding" in task else None,
            labels=profile.labels if task in ("classification", "image-classification") else (),
            max_length=profile.max_length,
            image_shape=IMAGE_SHAPE if task in IMAGE_TASKS else None,
            emulated=profile.name,
        )
        self._spread = profile.spread.sampler(random.Random(seed))
        self._device = asyncio.Lock()

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def max_batch_cap(self) -> int | None:
        return self.profile.max_batch

    async def run(self, batch: Batch) -> Sequence[object]:
        size = len(batch.payloads)
        async with self._device:  # one device: batches run one after another, as on a GPU
            await asyncio.sleep(self.profile.batch_seconds(size) * self._spread.draw())
        return [self._output(payload, batch.kind) for payload in batch.payloads]

    def _output(self, payload: Any, kind: Hashable) -> object:
        if kind == RERANK_KIND:
            query, document = payload
            logit = float(np.random.default_rng(_seed(f"{query}\0{document}")).normal(0, 2))
            score = 1.0 / (1.0 + math.exp(-logit))
            return RerankOutput(logit, score, _tokens(query) + _tokens(document) - 1)
        if self.task == "multimodal-embedding":
            return self._embed(payload, kind)
        if kind == IMAGE_KIND:
            # A decoded image or a preprocessed array: either way, its pixels pick the scores.
            pixels = payload.tobytes()
            logits = np.random.default_rng(_seed(pixels)).standard_normal(len(self.profile.labels))
            scores = np.exp(logits - logits.max())
            return ClassificationOutput((scores / scores.sum()).astype(np.float32), 0)
        text = str(payload)
        rng = np.random.default_rng(_seed(text))
        if self.task == "embedding":
            vector = rng.standard_normal(self.profile.dimensions).astype(np.float32)
            if kind == embedding_kind(True):
                vector /= np.linalg.norm(vector)
            return EmbeddingOutput(vector, _tokens(text))
        assert kind == CLASSIFICATION_KIND
        logits = rng.standard_normal(len(self.profile.labels))
        scores = np.exp(logits - logits.max())
        return ClassificationOutput((scores / scores.sum()).astype(np.float32), _tokens(text))

    def _embed(self, payload: Any, kind: Hashable) -> EmbeddingOutput:
        """A vector from a text's characters or an image's pixels, in the one space."""
        image = kind in (multimodal_kind("image", True), multimodal_kind("image", False))
        seed = _seed(payload.tobytes()) if image else _seed(str(payload))
        rng = np.random.default_rng(seed)
        vector = rng.standard_normal(self.profile.dimensions).astype(np.float32)
        if kind in (multimodal_kind("text", True), multimodal_kind("image", True)):
            vector /= np.linalg.norm(vector)
        return EmbeddingOutput(vector, 0 if image else _tokens(str(payload)))

    async def warm_up(self) -> None:
        """The model load: the profile's start-up time (cancellable, so SIGTERM is prompt)."""
        log.warning(
            "EMULATED accelerator %s: no model runs; batches wait t(b) = %.3g + %.3g*b ms "
            "(%s; %s). Loading takes %.1f s.",
            self._info.device,
            self.profile.base_ms,
            self.profile.per_item_ms,
            self.profile.accelerator,
            "measured" if self.profile.measured else "estimated",
            self.profile.load_seconds,
        )
        await asyncio.sleep(self.profile.load_seconds)

    def close(self) -> None:
        """Nothing to release."""


def load_emulated(uri: str, task: Task, *, seed: int | None = None) -> list[EmulatedModel]:
    """One emulated worker (one device per pod, as one GPU per replica)."""
    return [EmulatedModel(load_profile(uri), task, seed=seed)]
