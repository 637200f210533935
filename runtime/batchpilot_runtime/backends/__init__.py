"""Model backends: what the app serves, behind the batcher's model protocol.

A served model is a :class:`~batchpilot_runtime.batcher.Model` (``async run(batch)``) that also
describes itself (:class:`ModelInfo`) and may cap its batch size (the largest batch found to
fit in device memory at start-up). This module is torch-free; ``hf`` holds the torch code,
``emulated`` an accelerator emulated by timed waits.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from batchpilot_runtime.batcher import Model

Task = Literal[
    "embedding", "classification", "rerank", "image-classification", "multimodal-embedding"
]
TASKS: tuple[Task, ...] = (
    "embedding",
    "classification",
    "rerank",
    "image-classification",
    "multimodal-embedding",
)
Modality = Literal["text", "image"]
"""What a ``multimodal-embedding`` item is: a text for the text tower, an image for the other."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What clients and ``/stats`` learn about a served model."""

    task: Task
    device: str
    dimensions: int | None = None
    """Embedding size (``embedding`` and ``multimodal-embedding``)."""
    labels: tuple[str, ...] = ()
    """Class labels in output order (``classification`` and ``image-classification``)."""
    max_length: int = 512
    """Longest input in tokens; longer inputs are truncated."""
    image_shape: tuple[int, int, int] | None = None
    """Channels, height and width of a preprocessed image (the image tasks)."""
    emulated: str | None = None
    """The service-time profile of an emulated accelerator (None: a real model runs)."""


@dataclass(frozen=True, slots=True)
class EmbeddingOutput:
    vector: npt.NDArray[np.float32]
    tokens: int


@dataclass(frozen=True, slots=True)
class ClassificationOutput:
    scores: npt.NDArray[np.float32]
    """One score per label, in ``ModelInfo.labels`` order."""
    tokens: int


@dataclass(frozen=True, slots=True)
class RerankOutput:
    logit: float
    """The cross-encoder's raw output for the pair."""
    score: float
    """``sigmoid(logit)``: the relevance score in [0, 1]."""
    tokens: int


def embedding_kind(normalize: bool) -> Hashable:
    """Batch kind of embedding items (normalised and raw items never share a batch)."""
    return ("embedding", normalize)


CLASSIFICATION_KIND: Hashable = ("classification",)
RERANK_KIND: Hashable = ("rerank",)
"""Batch kind of (query, document) pairs: each pair is one item."""
IMAGE_KIND: Hashable = ("image",)
"""Batch kind of images: a decoded image or a preprocessed ``(C, H, W)`` float32 array."""


def multimodal_kind(modality: Modality, normalize: bool) -> Hashable:
    """Batch kind of ``multimodal-embedding`` items: texts and images run different towers,
    so they never share a batch (nor do normalised and raw vectors)."""
    return ("multimodal", modality, normalize)


class ModelRefused(ValueError):  # noqa: N818  (the name says what happened)
    """The model at the path cannot serve the task: raised at load; the message says why and
    what to do instead."""


class ServedModel(Model, Protocol):
    """A model worker: one device, one copy of the weights."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def max_batch_cap(self) -> int | None:
        """The largest batch that fits in device memory, when known."""
        ...

    async def warm_up(self) -> None:
        """Run a few batches so the first request does not pay for lazy initialisation."""
        ...

    def close(self) -> None:
        """Release threads and device memory."""
        ...
