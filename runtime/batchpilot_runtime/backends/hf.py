"""Transformers models on torch: embedding (mean pooling), sequence classification and
reranking (a cross-encoder: one output per (query, document) pair); images in ``hf_image``,
text and image embeddings in ``hf_multimodal``.

Each :class:`TransformersModel` owns one device and two worker threads: one tokenises, one
runs forward passes. ``run()`` hands a batch to the first and then to the second, so while
batch N is on the device the next batch is already being tokenised, and the event loop (which
encodes responses) is never blocked by either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from batchpilot_runtime.backends import (
    CLASSIFICATION_KIND,
    RERANK_KIND,
    ClassificationOutput,
    EmbeddingOutput,
    ModelInfo,
    ModelRefused,
    RerankOutput,
    Task,
    embedding_kind,
)
from batchpilot_runtime.backends.memory import largest_fitting_batch
from batchpilot_runtime.batcher import Batch, OutOfMemory

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MEMORY_HEADROOM = 0.9
"""Share of device memory a probed batch may use (the rest absorbs fragmentation)."""
PROBE_LIMIT = 1024
"""Largest batch size the start-up memory probe tries."""


class DeviceMemory(Protocol):
    """Memory figures of one device: the boundary the start-up probe reads (faked in tests)."""

    def capacity(self) -> int:
        """Bytes this process may use: free memory plus what it already holds."""
        ...

    def reset_peak(self) -> None: ...

    def peak(self) -> int:
        """Peak bytes allocated since the last reset."""
        ...


class CudaMemory:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def capacity(self) -> int:
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free + torch.cuda.memory_allocated(self.device))

    def reset_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))


def visible_devices(choice: str) -> list[torch.device]:
    """The devices to serve on: ``auto`` is every visible GPU, else the CPU."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise RuntimeError("--device cuda: no GPU is visible")
        return [torch.device("cuda", i) for i in range(count)]
    return [torch.device(choice)]


class TransformersModel:
    """One copy of a transformers model on one device, served through ``run(batch)``."""

    def __init__(
        self,
        path: Path,
        task: Task,
        device: torch.device,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.task = task
        self.device = device
        torch_dtype = _dtype(dtype, device)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
        loader = AutoModel if task == "embedding" else AutoModelForSequenceClassification
        model = loader.from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            dtype=torch_dtype,
        )
        config = model.config
        if task == "rerank" and config.num_labels != 1:
            raise ModelRefused(
                f"task rerank: the model at {path.name} has {config.num_labels} output labels; "
                "a reranker (cross-encoder) has exactly one. Serve it with task classification, "
                "or give a single-output cross-encoder"
            )
        self.model: torch.nn.Module = model.to(device).eval()
        limits = [self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", 0)]
        self.max_length = min(n for n in limits if isinstance(n, int) and 0 < n < 1_000_000)
        labels: tuple[str, ...] = ()
        if task == "classification":
            labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        self.multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        self._info = ModelInfo(
            task=task,
            device=str(device),
            dimensions=int(config.hidden_size) if task == "embedding" else None,
            labels=labels,
            max_length=self.max_length,
        )
        self._cap: int | None = None
        self._on_device = 0
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix=f"tokenize-{device}")
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix=f"forward-{device}")

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def max_batch_cap(self) -> int | None:
        return self._cap

    async def run(self, batch: Batch) -> Sequence[object]:
        loop = asyncio.get_running_loop()
        if self._on_device == 0:
            # The device is idle: tokenise on the device thread too, saving a thread hop.
            self._on_device += 1
            try:
                return await loop.run_in_executor(
                    self._device_pool, self._tokenize_and_forward, batch.payloads, batch.kind
                )
            finally:
                self._on_device -= 1
        # The device is busy: tokenise now, in parallel with the batch on the device.
        encoded = await loop.run_in_executor(self._tokenize_pool, self._tokenize, batch.payloads)
        self._on_device += 1
        try:
            return await loop.run_in_executor(self._device_pool, self._forward, encoded, batch.kind)
        finally:
            self._on_device -= 1

    async def warm_up(self) -> None:
        kind = embedding_kind(True) if self.task == "embedding" else CLASSIFICATION_KIND
        payload: object = "warming up the model"
        if self.task == "rerank":
            kind, payload = RERANK_KIND, ("warming up", "the model")
        for size in (1, 8, 1):
            await self.run(Batch(kind, [payload] * size))

    def probe_max_batch(self, memory: DeviceMemory, limit: int = PROBE_LIMIT) -> int:
        """Find and keep the largest batch of longest inputs that fits in ``memory``."""
        text = "hello " * self.max_length
        longest = self._tokenize([(text, text) if self.task == "rerank" else text])

        def try_batch(n: int) -> int:
            memory.reset_peak()
            encoded = {k: v.expand(n, -1).contiguous() for k, v in longest.items()}
            self._forward(encoded, None)
            return memory.peak()

        budget = int(memory.capacity() * MEMORY_HEADROOM)
        self._cap = largest_fitting_batch(try_batch, budget_bytes=budget, limit=limit)
        log.info("largest batch that fits on %s: %d", self.device, self._cap)
        return self._cap

    def close(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self._device_pool.shutdown(wait=True)

    # -- worker threads ----------------------------------------------------------------------

    def _tokenize(self, texts: Sequence[object]) -> dict[str, torch.Tensor]:
        if self.task == "rerank":
            # (query, document) pairs: the tokenizer joins each pair with its separator.
            pairs: list[tuple[str, str]] = list(texts)  # type: ignore[arg-type]
            encoded = self.tokenizer(
                [q for q, _ in pairs],
                [d for _, d in pairs],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            return dict(encoded)
        encoded = self.tokenizer(
            [str(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(encoded)

    def _tokenize_and_forward(self, texts: Sequence[object], kind: Hashable) -> list[object]:
        return self._forward(self._tokenize(texts), kind)

    def _forward(self, encoded: dict[str, torch.Tensor], kind: Hashable) -> list[object]:
        try:
            with torch.inference_mode():
                inputs = {k: v.to(self.device, non_blocking=True) for k, v in encoded.items()}
                output = self.model(**inputs)
                mask = inputs["attention_mask"]
                tokens = mask.sum(dim=1).tolist()
                if self.task == "embedding":
                    hidden = output.last_hidden_state
                    weights = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
                    if kind == embedding_kind(True):
                        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                    rows = pooled.float().cpu().numpy()
                    return [EmbeddingOutput(row, n) for row, n in zip(rows, tokens, strict=True)]
                logits = output.logits.float()
                if self.task == "rerank":
                    column = logits[:, 0]
                    pairs = zip(column.tolist(), column.sigmoid().tolist(), tokens, strict=True)
                    return [RerankOutput(logit, score, n) for logit, score, n in pairs]
                scores = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
                rows = scores.cpu().numpy()
                return [ClassificationOutput(row, n) for row, n in zip(rows, tokens, strict=True)]
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(str(exc)) from None


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}") from None


def load_models(
    path: Path,
    task: Task,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    memory: Callable[[torch.device], DeviceMemory] = CudaMemory,
) -> list[TransformersModel]:
    """One model worker per device; on GPUs, each finds its largest fitting batch."""
    models = []
    kind: type[TransformersModel] = TransformersModel
    if task == "image-classification":
        from batchpilot_runtime.backends.hf_image import ImageClassifier

        kind = ImageClassifier
    elif task == "multimodal-embedding":
        from batchpilot_runtime.backends.hf_multimodal import MultimodalEmbedder

        kind = MultimodalEmbedder
    for dev in visible_devices(device):
        model = kind(path, task, dev, dtype=dtype, trust_remote_code=trust_remote_code)
        if dev.type == "cuda":
            model.probe_max_batch(memory(dev))
        models.append(model)
    return models


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (``None``: torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)


__all__ = [
    "CudaMemory",
    "DeviceMemory",
    "TransformersModel",
    "configure_threads",
    "load_models",
    "visible_devices",
]
