"""A runtime app over fake models, for tests of the HTTP layer: the model, the settings, and
a client served in process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI

from batchpilot_runtime.app import Runtime, create_app
from batchpilot_runtime.backends import (
    ClassificationOutput,
    EmbeddingOutput,
    ModelInfo,
    ServedModel,
)
from batchpilot_runtime.batcher import Batch
from batchpilot_runtime.settings import Settings

LABELS = ("negative", "positive")


class FakeModel:
    """Embeds a text as [len, words, 0, 0]; classifies by whether it contains 'good'."""

    def __init__(self, task: str = "embedding") -> None:
        self._info = ModelInfo(
            task=task,  # type: ignore[arg-type]
            device="fake",
            dimensions=4 if task == "embedding" else None,
            labels=LABELS if task == "classification" else (),
        )
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[list[str]] = []
        self.entered = asyncio.Event()

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def max_batch_cap(self) -> int | None:
        return None

    async def warm_up(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def run(self, batch: Batch) -> Sequence[object]:
        texts = list(batch.payloads)
        self.batches.append(texts)
        self.entered.set()
        await self.gate.wait()
        if self._info.task == "embedding":
            return [
                EmbeddingOutput(np.array([len(t), len(t.split()), 0, 0], np.float32), len(t))
                for t in texts
            ]
        return [
            ClassificationOutput(
                np.array([0.1, 0.9] if "good" in t else [0.8, 0.2], np.float32), len(t)
            )
            for t in texts
        ]


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model": "/models/fake",
        "name": "fake",
        "config": tmp_path / "batching.json",
        "normalize": False,
    }
    values.update(overrides)
    return Settings(**values)


def write_config(path: Path, **fields: Any) -> None:
    path.write_text(json.dumps(fields))


@asynccontextmanager
async def serve(
    cfg: Settings, loader: Callable[[], Sequence[ServedModel]]
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    app: FastAPI = create_app(cfg, loader)
    runtime: Runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            yield client, runtime


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for ``condition``, yielding to the app in between."""
    for _ in range(4000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def until_ready(runtime: Runtime) -> None:
    await until(lambda: runtime.ready)
