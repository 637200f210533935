"""Image classification on torch: ``AutoModelForImageClassification`` and its image processor.

The same two-thread pipeline as the text models (:class:`~.hf.TransformersModel`): the
processor resizes and normalises batch N+1 in one thread while batch N runs on the device in
the other. A batch item is a decoded RGB image, which the processor prepares, or a ``(C, H, W)``
float32 array that a client already prepared (the model's shape, checked at the request).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from batchpilot_runtime.backends import IMAGE_KIND, ClassificationOutput, ModelInfo, Task
from batchpilot_runtime.backends.hf import DeviceMemory, TransformersModel, _dtype
from batchpilot_runtime.backends.memory import largest_fitting_batch
from batchpilot_runtime.batcher import Batch, OutOfMemory

log = logging.getLogger(__name__)

PROBE_LIMIT = 1024


class ImageClassifier(TransformersModel):
    """One copy of an image classifier on one device, served through ``run(batch)``."""

    def __init__(
        self,
        path: Path,
        task: Task,
        device: torch.device,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        # The text model's constructor loads a tokenizer: this one sets up its own state.
        self.task = task
        self.device = device
        self.dtype = _dtype(dtype, device)
        self.processor = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModelForImageClassification.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code, dtype=self.dtype
        )
        self.model = model.to(device).eval()
        config = model.config
        self.multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        # What the processor makes of any image is the shape a preprocessed tensor must have.
        probe = self._pixels([Image.new("RGB", (32, 32))])
        channels, height, width = (int(n) for n in probe.shape[1:])
        self.max_length = 0
        self._info = ModelInfo(
            task=task,
            device=str(device),
            labels=tuple(str(config.id2label[i]) for i in range(config.num_labels)),
            max_length=0,
            image_shape=(channels, height, width),
        )
        self._cap: int | None = None
        self._on_device = 0
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix=f"preprocess-{device}")
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix=f"forward-{device}")

    async def warm_up(self) -> None:
        image = Image.new("RGB", (64, 48), (120, 80, 40))
        for size in (1, 8, 1):
            await self.run(Batch(IMAGE_KIND, [image] * size))

    def probe_max_batch(self, memory: DeviceMemory, limit: int = PROBE_LIMIT) -> int:
        """Find and keep the largest batch of images that fits in ``memory``."""
        shape = self._info.image_shape
        assert shape is not None

        def try_batch(n: int) -> int:
            memory.reset_peak()
            self._forward({"pixel_values": torch.zeros(n, *shape)}, IMAGE_KIND)
            return memory.peak()

        budget = int(memory.capacity() * 0.9)
        self._cap = largest_fitting_batch(try_batch, budget_bytes=budget, limit=limit)
        log.info("largest batch that fits on %s: %d", self.device, self._cap)
        return self._cap

    # -- worker threads ----------------------------------------------------------------------

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = self.processor(images=list(images), return_tensors="pt")
        pixels: torch.Tensor = out["pixel_values"]
        return pixels

    def _tokenize(self, texts: Sequence[object]) -> dict[str, torch.Tensor]:
        """Preprocess a batch: images through the processor, arrays as they are, in order."""
        rows: list[torch.Tensor | None] = [None] * len(texts)
        decoded = [(i, p) for i, p in enumerate(texts) if isinstance(p, Image.Image)]
        if decoded:
            pixels = self._pixels([p for _, p in decoded])
            for (i, _), row in zip(decoded, pixels, strict=True):
                rows[i] = row
        for i, p in enumerate(texts):
            if isinstance(p, np.ndarray):
                rows[i] = torch.from_numpy(p)
        return {"pixel_values": torch.stack([r for r in rows if r is not None])}

    def _forward(self, encoded: dict[str, torch.Tensor], kind: Hashable) -> list[object]:
        try:
            with torch.inference_mode():
                pixels = encoded["pixel_values"].to(self.device, self.dtype, non_blocking=True)
                logits = self.model(pixel_values=pixels).logits.float()
                scores = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
                return [ClassificationOutput(row, 0) for row in scores.cpu().numpy()]
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(str(exc)) from None
