"""The device-memory boundary the memory stage works through: the real GPU allocator, or
(dry run) memory figures faked at the boundary, as the unit tests of the probe do."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from batchpilot_runtime.backends.hf import CudaMemory, DeviceMemory, TransformersModel


class Boundary(Protocol):
    """Memory figures and limits of one device, for one model on it."""

    def memory(self) -> DeviceMemory:
        """What the runtime's probe reads (capacity within any limit set here)."""
        ...

    def at_rest(self) -> int:
        """Bytes held with no batch running (the weights)."""
        ...

    def total(self) -> int:
        """The device's whole memory."""
        ...

    def limit(self, nbytes: int | None) -> None:
        """Let the allocator hold at most ``nbytes`` (``None``: the whole device)."""
        ...


class LimitedCudaMemory(CudaMemory):
    """The runtime's CUDA figures, with capacity within the allocator's per-process limit
    (``mem_get_info`` reports the whole free memory whatever the limit)."""

    def __init__(self, device: torch.device, limit: int | None) -> None:
        super().__init__(device)
        self.limit = limit

    def capacity(self) -> int:
        real = super().capacity()
        return real if self.limit is None else min(real, self.limit)


class CudaBoundary:
    """The real thing: ``torch.cuda`` figures, limits by ``set_per_process_memory_fraction``."""

    def __init__(self, model: TransformersModel) -> None:
        self.device = model.device
        self._limit: int | None = None

    def memory(self) -> DeviceMemory:
        return LimitedCudaMemory(self.device, self._limit)

    def at_rest(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        return int(torch.cuda.memory_allocated(self.device))

    def total(self) -> int:
        return int(torch.cuda.get_device_properties(self.device).total_memory)

    def limit(self, nbytes: int | None) -> None:
        torch.cuda.empty_cache()
        fraction = 1.0 if nbytes is None else min(1.0, nbytes / self.total())
        torch.cuda.set_per_process_memory_fraction(fraction, self.device)
        self._limit = nbytes


class FakeBoundary:
    """A modelled device for the dry run: ``weights + per_item * batch`` bytes at the peak,
    and an allocator that raises torch's out-of-memory error past its limit."""

    def __init__(self, model: TransformersModel, *, total: int, weights: int, per_item: int):
        self._total, self.weights, self.per_item = total, weights, per_item
        self._limit: int | None = None
        self._batch = 0
        model.model.register_forward_pre_hook(self._forward, with_kwargs=True)

    def _forward(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        self._batch = int(kwargs["input_ids"].shape[0])
        if self._limit is not None and self._peak() > self._limit:
            raise torch.OutOfMemoryError("CUDA out of memory (modelled by the dry run)")

    def _peak(self) -> int:
        return self.weights + self.per_item * self._batch

    def memory(self) -> DeviceMemory:
        boundary = self

        class Figures:
            def capacity(self) -> int:
                cap = boundary._total
                return cap if boundary._limit is None else min(cap, boundary._limit)

            def reset_peak(self) -> None:
                boundary._batch = 0

            def peak(self) -> int:
                return boundary._peak()

        return Figures()

    def at_rest(self) -> int:
        return self.weights

    def total(self) -> int:
        return self._total

    def limit(self, nbytes: int | None) -> None:
        self._limit = nbytes


def peak_of(model: TransformersModel, memory: DeviceMemory, encoded: dict[str, Any]) -> int:
    """Peak bytes of one forward pass of ``encoded`` (raises the runtime's OutOfMemory)."""
    memory.reset_peak()
    model._forward(encoded, None)
    return memory.peak()
