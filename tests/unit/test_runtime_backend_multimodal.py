"""The torch backend's multimodal-embedding task on tiny CLIP and SigLIP models built from a
config (random weights): one shared dimension, a vector that does not depend on its batch-mates,
decoded images and preprocessed tensors alike, a batch mixing texts and images refused, and a
model without an image tower refused at load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from batchpilot_runtime.backends import EmbeddingOutput, ModelRefused, multimodal_kind
from batchpilot_runtime.backends.hf import load_models
from batchpilot_runtime.batcher import Batch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "sat", "a", "the", "mat"]
TOWER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
TEXT = multimodal_kind("text", True)
IMAGE = multimodal_kind("image", True)


def tokenizer(path: Path) -> None:
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)


def clip(path: Path) -> Path:
    """A one-layer CLIP: text and 16x16-image towers projected to 8 dimensions."""
    text = {**TOWER, "vocab_size": len(VOCAB), "num_attention_heads": 2}
    text |= {"max_position_embeddings": 32, "pad_token_id": 0, "bos_token_id": 2}
    vision = {**TOWER, "num_attention_heads": 2, "image_size": 16, "patch_size": 8}
    config = CLIPConfig(text_config={**text, "eos_token_id": 3}, vision_config=vision)
    config.projection_dim = 8
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer(path)
    crop = {"height": 16, "width": 16}
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=crop).save_pretrained(path)
    return path


def siglip(path: Path) -> Path:
    text = {**TOWER, "vocab_size": len(VOCAB), "num_attention_heads": 2}
    vision = {**TOWER, "num_attention_heads": 2, "image_size": 16, "patch_size": 8}
    config = SiglipConfig(text_config={**text, "max_position_embeddings": 16}, vision_config=vision)
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(path)
    tokenizer(path)
    SiglipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def vector(out: object) -> np.ndarray:
    assert isinstance(out, EmbeddingOutput)
    return out.vector


async def test_clip_embeds_texts_and_images_in_one_space(tmp_path: Path) -> None:
    path = clip(tmp_path)
    (model,) = load_models(path, "multimodal-embedding", device="cpu")
    try:
        assert model.info.dimensions == 8
        assert model.info.image_shape == (3, 16, 16)
        texts = ["the cat", "a dog sat on the mat the mat"]
        together = await model.run(Batch(TEXT, texts))
        for text, out in zip(texts, together, strict=True):
            (alone,) = await model.run(Batch(TEXT, [text]))
            np.testing.assert_allclose(vector(out), vector(alone), atol=1e-5)
            assert np.linalg.norm(vector(out)) == pytest.approx(1.0, abs=1e-5)
        assert isinstance(together[0], EmbeddingOutput)
        assert together[0].tokens == 4  # [CLS] the cat [SEP]
        red = Image.new("RGB", (40, 20), (220, 20, 20))
        blue = Image.new("RGB", (10, 30), (20, 20, 220))
        processor = CLIPImageProcessor.from_pretrained(str(path))
        prepared = np.asarray(processor(images=[red], return_tensors="np")["pixel_values"][0])
        images = await model.run(Batch(IMAGE, [red, prepared.astype(np.float32), blue]))
        np.testing.assert_allclose(vector(images[0]), vector(images[1]), atol=1e-5)
        assert not np.allclose(vector(images[0]), vector(images[2]))
        assert vector(images[0]).shape == vector(together[0]).shape
        (raw,) = await model.run(Batch(multimodal_kind("image", False), [red]))
        norm = float(np.linalg.norm(vector(raw)))
        np.testing.assert_allclose(vector(raw) / norm, vector(images[0]), atol=1e-5)
        with pytest.raises(TypeError, match="mixes texts and images"):
            await model.run(Batch(IMAGE, [red, "the cat"]))
        await model.warm_up()
    finally:
        model.close()


async def test_siglip_loads_through_the_same_code(tmp_path: Path) -> None:
    (model,) = load_models(siglip(tmp_path), "multimodal-embedding", device="cpu")
    try:
        assert model.info.dimensions == 16
        (text,) = await model.run(Batch(TEXT, ["the cat"]))
        (image,) = await model.run(Batch(IMAGE, [Image.new("RGB", (20, 20))]))
        assert vector(text).shape == vector(image).shape == (16,)
    finally:
        model.close()


def test_a_model_without_an_image_tower_is_refused(tmp_path: Path) -> None:
    config = BertConfig(vocab_size=len(VOCAB), num_attention_heads=2, **TOWER)
    BertModel(config).save_pretrained(tmp_path)
    tokenizer(tmp_path)
    with pytest.raises(ModelRefused, match=r"multimodal-embedding: .* \(bert\) has no text and"):
        load_models(tmp_path, "multimodal-embedding", device="cpu")
