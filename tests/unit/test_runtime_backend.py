"""The torch backend on a tiny model built from a config, and the GPU memory probe with the
memory figures faked at the boundary (no GPU needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from batchpilot_contract.batching import BatchingConfig
from batchpilot_runtime.backends import ClassificationOutput, EmbeddingOutput, embedding_kind
from batchpilot_runtime.backends.hf import TransformersModel, load_models
from batchpilot_runtime.backends.memory import largest_fitting_batch
from batchpilot_runtime.batcher import Batch, Batcher, OutOfMemory

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "day", "a", "b", "c"]


def tiny_model(path: Path, task: str) -> Path:
    from transformers import BertTokenizerFast

    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label={0: "bad", 1: "good", 2: "meh"},
        label2id={"bad": 0, "good": 1, "meh": 2},
    )
    torch.manual_seed(0)
    model = BertModel(config) if task == "embedding" else BertForSequenceClassification(config)
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("embedder"), "embedding")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("classifier"), "classification")


async def test_embeddings_are_mean_pooled_and_normalised(embedder_dir: Path) -> None:
    (model,) = load_models(embedder_dir, "embedding", device="cpu")
    try:
        texts = ["good day", "a b c a b c a"]
        raw = await model.run(Batch(embedding_kind(False), texts))
        unit = await model.run(Batch(embedding_kind(True), texts))
        assert model.info.dimensions == 16
        assert all(isinstance(o, EmbeddingOutput) for o in raw)
        for text, r, u in zip(texts, raw, unit, strict=True):
            assert isinstance(r, EmbeddingOutput)
            assert isinstance(u, EmbeddingOutput)
            alone = await model.run(Batch(embedding_kind(False), [text]))
            assert isinstance(alone[0], EmbeddingOutput)
            np.testing.assert_allclose(r.vector, alone[0].vector, atol=1e-5)  # padding ignored
            np.testing.assert_allclose(u.vector, r.vector / np.linalg.norm(r.vector), atol=1e-5)
        first = raw[0]
        assert isinstance(first, EmbeddingOutput)
        assert first.tokens == 4
    finally:
        model.close()


async def test_classification_scores_follow_the_config_labels(classifier_dir: Path) -> None:
    (model,) = load_models(classifier_dir, "classification", device="cpu")
    try:
        assert model.info.labels == ("bad", "good", "meh")
        outputs = await model.run(Batch(("classification",), ["good day", "bad"]))
        for out in outputs:
            assert isinstance(out, ClassificationOutput)
            assert out.scores.shape == (3,)
            assert float(out.scores.sum()) == pytest.approx(1.0, abs=1e-5)
    finally:
        model.close()


def test_largest_fitting_batch_doubles_then_bisects() -> None:
    tried: list[int] = []

    def try_batch(n: int) -> int:
        tried.append(n)
        return 1000 + 100 * n

    assert largest_fitting_batch(try_batch, budget_bytes=1000 + 100 * 37, limit=1024) == 37
    assert tried[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert largest_fitting_batch(lambda n: n, budget_bytes=10**9, limit=100) == 100


def test_largest_fitting_batch_treats_out_of_memory_as_a_miss() -> None:
    def try_batch(n: int) -> int:
        if n > 5:
            raise OutOfMemory("no")
        return n

    assert largest_fitting_batch(try_batch, budget_bytes=10**9, limit=64) == 5
    with pytest.raises(OutOfMemory):
        largest_fitting_batch(lambda n: 10**10, budget_bytes=10, limit=64)


class FakeMemory:
    """Device memory figures as a GPU would report them: weights plus a cost per input."""

    def __init__(self, model: TransformersModel, capacity: int, per_item: int) -> None:
        self._capacity = capacity
        self.per_item = per_item
        self.batch = 0
        model.model.register_forward_pre_hook(self._saw, with_kwargs=True)

    def _saw(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        self.batch = int(kwargs["input_ids"].shape[0])

    def capacity(self) -> int:
        return self._capacity

    def reset_peak(self) -> None:
        self.batch = 0

    def peak(self) -> int:
        return 1_000 + self.per_item * self.batch


def test_the_probe_finds_the_largest_batch_that_fits(embedder_dir: Path) -> None:
    model = TransformersModel(embedder_dir, "embedding", torch.device("cpu"))
    try:
        memory = FakeMemory(model, capacity=100_000, per_item=1_000)
        # 90% of 100 kB = 90 kB; 1 kB of weights + 1 kB per input: 89 inputs fit.
        assert model.probe_max_batch(memory, limit=256) == 89
        assert model.max_batch_cap == 89
    finally:
        model.close()


async def test_out_of_memory_on_the_device_splits_the_batch(embedder_dir: Path) -> None:
    model = TransformersModel(embedder_dir, "embedding", torch.device("cpu"))

    def too_big(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model.model.register_forward_pre_hook(too_big, with_kwargs=True)
    batcher = Batcher(model, BatchingConfig(max_batch_size=8, max_wait_ms=0))
    batcher.start()
    try:
        with pytest.raises(OutOfMemory):
            await model.run(Batch(embedding_kind(True), ["a"] * 3))
        texts = ["a", "b", "c", "good", "bad", "day", "a b"]
        outputs = await asyncio.gather(*batcher.submit_many(embedding_kind(True), texts))
        assert len(outputs) == len(texts)
        assert batcher.stats.splits >= 2
    finally:
        await batcher.aclose()
        model.close()
