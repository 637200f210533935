"""Text and image embeddings in one space on torch: a CLIP- or SigLIP-style model (``AutoModel``
with ``get_text_features`` and ``get_image_features``), its tokenizer and its image processor.

The same two-thread pipeline as the other models (:class:`~.hf.TransformersModel`): one thread
tokenises or preprocesses batch N+1 while batch N runs on the device. A batch is all texts or
all images (the batcher never mixes kinds); a batch that mixes them is refused, so that the
mistake shows rather than one tower reading the other's input. The vectors are the projected
features, L2-normalised unless asked otherwise, as the model compares them.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from batchpilot_runtime.backends import (
    EmbeddingOutput,
    ModelInfo,
    ModelRefused,
    Task,
    multimodal_kind,
)
from batchpilot_runtime.backends.hf import DeviceMemory, TransformersModel, _dtype
from batchpilot_runtime.backends.memory import largest_fitting_batch
from batchpilot_runtime.batcher import Batch, OutOfMemory

log = logging.getLogger(__name__)

PROBE_LIMIT = 1024
PAD_TO_MAX_LENGTH = ("siglip",)
"""Model types whose text tower was trained on texts padded to the full length."""


class MultimodalEmbedder(TransformersModel):
    """One copy of a text and image embedder on one device, served through ``run(batch)``."""

    def __init__(
        self,
        path: Path,
        task: Task,
        device: torch.device,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        # The text model's constructor loads another model class: this one sets up its own.
        self.task = task
        self.device = device
        self.dtype = _dtype(dtype, device)
        model = AutoModel.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code, dtype=self.dtype
        )
        config = model.config
        towers = ("get_text_features", "get_image_features")
        if getattr(config, "vision_config", None) is None or not all(
            hasattr(model, tower) for tower in towers
        ):
            raise ModelRefused(
                f"task multimodal-embedding: the model at {path.name} ({config.model_type}) has "
                "no text and image towers in one space; give a CLIP- or SigLIP-style model, or "
                "serve a text model with task embedding"
            )
        self.model = model.to(device).eval()
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
        self.processor = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
        text_config = getattr(config, "text_config", config)
        limits = [
            self.tokenizer.model_max_length,
            getattr(text_config, "max_position_embeddings", 0),
        ]
        self.max_length = min(n for n in limits if isinstance(n, int) and 0 < n < 1_000_000)
        self._padding: bool | str = "max_length" if config.model_type in PAD_TO_MAX_LENGTH else True
        self.multi_label = False
        self._cap: int | None = None
        self._on_device = 0
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix=f"preprocess-{device}")
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix=f"forward-{device}")
        # What the towers make of a probe gives the shared dimension and the pixel shape.
        pixels = self._tokenize([Image.new("RGB", (32, 32))])
        image_shape = tuple(int(n) for n in pixels["pixel_values"].shape[1:])
        text_dims = self._features(self._tokenize(["a probe"])).shape[1]
        image_dims = self._features(pixels).shape[1]
        if text_dims != image_dims:
            raise ModelRefused(
                f"task multimodal-embedding: the model at {path.name} embeds texts in "
                f"{text_dims} dimensions and images in {image_dims}: not one shared space"
            )
        self._info = ModelInfo(
            task=task,
            device=str(device),
            dimensions=int(text_dims),
            max_length=self.max_length,
            image_shape=(image_shape[0], image_shape[1], image_shape[2]),
        )

    async def warm_up(self) -> None:
        image = Image.new("RGB", (64, 48), (120, 80, 40))
        for size in (1, 8, 1):
            await self.run(Batch(multimodal_kind("text", True), ["warming up the model"] * size))
            await self.run(Batch(multimodal_kind("image", True), [image] * size))

    def probe_max_batch(self, memory: DeviceMemory, limit: int = PROBE_LIMIT) -> int:
        """The largest batch of longest texts, and of images, that fits in ``memory``."""
        shape = self._info.image_shape
        assert shape is not None
        longest = self._tokenize(["hello " * self.max_length])

        def try_batch(n: int) -> int:
            memory.reset_peak()
            self._features({k: v.expand(n, -1).contiguous() for k, v in longest.items()})
            self._features({"pixel_values": torch.zeros(n, *shape)})
            return memory.peak()

        budget = int(memory.capacity() * 0.9)
        self._cap = largest_fitting_batch(try_batch, budget_bytes=budget, limit=limit)
        log.info("largest batch that fits on %s: %d", self.device, self._cap)
        return self._cap

    # -- worker threads ----------------------------------------------------------------------

    def _tokenize(self, texts: Sequence[object]) -> dict[str, torch.Tensor]:
        """Tokenise a batch of texts, or preprocess a batch of images (arrays as they are)."""
        if all(isinstance(p, str) for p in texts):
            encoded = self.tokenizer(
                [str(t) for t in texts],
                padding=self._padding,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            return dict(encoded)
        if not all(isinstance(p, Image.Image | np.ndarray) for p in texts):
            raise TypeError("a batch mixes texts and images; each kind runs in its own batch")
        rows: list[torch.Tensor | None] = [None] * len(texts)
        decoded = [(i, p) for i, p in enumerate(texts) if isinstance(p, Image.Image)]
        if decoded:
            out = self.processor(images=[p for _, p in decoded], return_tensors="pt")
            for (i, _), row in zip(decoded, out["pixel_values"], strict=True):
                rows[i] = row
        for i, p in enumerate(texts):
            if isinstance(p, np.ndarray):
                rows[i] = torch.from_numpy(p)
        return {"pixel_values": torch.stack([r for r in rows if r is not None])}

    def _features(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """The projected features of a batch (on the device, not normalised)."""
        model: Any = self.model  # typed as a plain Module by the base class
        with torch.inference_mode():
            if "pixel_values" in encoded:
                pixels = encoded["pixel_values"].to(self.device, self.dtype, non_blocking=True)
                out: Any = model.get_image_features(pixel_values=pixels)
            else:
                inputs = {k: v.to(self.device, non_blocking=True) for k, v in encoded.items()}
                inputs.pop("token_type_ids", None)  # the text towers take ids and a mask only
                out = model.get_text_features(**inputs)
            # Newer transformers answer a model output whose pooler_output is the projection.
            features: torch.Tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
            return features

    def _forward(self, encoded: dict[str, torch.Tensor], kind: Hashable) -> list[object]:
        try:
            features = self._features(encoded)
            if kind in (multimodal_kind("text", True), multimodal_kind("image", True)):
                features = torch.nn.functional.normalize(features.float(), p=2, dim=1)
            rows = features.float().cpu().numpy()
            mask = encoded.get("attention_mask")
            tokens = [0] * len(rows) if mask is None else mask.sum(dim=1).tolist()
            return [EmbeddingOutput(row, n) for row, n in zip(rows, tokens, strict=True)]
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(str(exc)) from None
