"""The torch backend's rerank and image tasks on tiny models built from a config: a pair's
score does not depend on its batch-mates, a multi-output model is refused as a reranker, and
decoded images and preprocessed tensors batch together."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from batchpilot_runtime.backends import IMAGE_KIND, RERANK_KIND, ClassificationOutput, RerankOutput
from batchpilot_runtime.backends.hf import load_models
from batchpilot_runtime.batcher import Batch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "sat", "a", "the", "mat"]


def cross_encoder(path: Path, num_labels: int) -> Path:
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return path


def vit(path: Path) -> Path:
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "cat", 1: "dog"},
        label2id={"cat": 0, "dog": 1},
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


async def test_a_pair_scores_the_same_alone_and_in_a_padded_batch(tmp_path: Path) -> None:
    (model,) = load_models(cross_encoder(tmp_path, 1), "rerank", device="cpu")
    try:
        pairs = [("the cat", "a cat sat"), ("dog", "the mat the mat the mat a dog")]
        together = await model.run(Batch(RERANK_KIND, pairs))
        for pair, out in zip(pairs, together, strict=True):
            assert isinstance(out, RerankOutput)
            (alone,) = await model.run(Batch(RERANK_KIND, [pair]))
            assert isinstance(alone, RerankOutput)
            assert out.logit == pytest.approx(alone.logit, abs=1e-5)
            assert out.score == pytest.approx(1 / (1 + math.exp(-out.logit)), abs=1e-6)
        first = together[0]
        assert isinstance(first, RerankOutput)
        assert first.tokens == 8  # [CLS] the cat [SEP] a cat sat [SEP]
        assert model.info.labels == ()
    finally:
        model.close()


def test_a_model_with_more_than_one_output_is_not_a_reranker(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"rerank: .* has 3 output labels; .* exactly one"):
        load_models(cross_encoder(tmp_path, 3), "rerank", device="cpu")


async def test_images_and_preprocessed_tensors_share_a_batch(tmp_path: Path) -> None:
    path = vit(tmp_path)
    (model,) = load_models(path, "image-classification", device="cpu")
    try:
        assert model.info.image_shape == (3, 16, 16)
        assert model.info.labels == ("cat", "dog")
        red = Image.new("RGB", (40, 20), (220, 20, 20))
        blue = Image.new("RGB", (10, 30), (20, 20, 220))
        processor = ViTImageProcessor.from_pretrained(str(path))
        prepared = np.asarray(processor(images=[red], return_tensors="np")["pixel_values"][0])
        outputs = await model.run(Batch(IMAGE_KIND, [red, prepared.astype(np.float32), blue]))
        scores = []
        for out in outputs:
            assert isinstance(out, ClassificationOutput)
            assert float(out.scores.sum()) == pytest.approx(1.0, abs=1e-5)
            scores.append(out.scores)
        np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)
        assert not np.allclose(scores[0], scores[2])
        await model.warm_up()
    finally:
        model.close()
