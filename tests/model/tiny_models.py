"""Tiny models of the newer tasks, built from a config with random weights at test time: a
cross-encoder (MiniLM's tokenizer, one output), a ViT image classifier with its processor, and
a CLIP (MiniLM's tokenizer, a ViT image tower and CLIP's image processor)."""

from __future__ import annotations

from pathlib import Path

import torch
from runtime_server import minilm_path
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

IMAGE_LABELS = {0: "cat", 1: "dog", 2: "bird", 3: "fish"}
IMAGE_SIZE = 32


def reranker(path: Path, num_labels: int = 1) -> Path:
    """A two-layer BERT cross-encoder with ``num_labels`` outputs (a reranker has one)."""
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def image_classifier(path: Path) -> Path:
    """A one-layer ViT on 32x32 images (patches of 8) with four labels, and its processor."""
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=IMAGE_LABELS,
        label2id={v: k for k, v in IMAGE_LABELS.items()},
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ViTImageProcessor(size=size).save_pretrained(path)
    return path


CLIP_DIMS = 16


def clip(path: Path) -> Path:
    """A one-layer CLIP: texts (MiniLM's tokenizer) and 32x32 images, projected to 16 dims."""
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text = {
        **tower,
        "vocab_size": tokenizer.vocab_size,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,  # the text tower pools at the end token
    }
    vision = {**tower, "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 8}
    config = CLIPConfig(text_config=text, vision_config=vision)
    config.projection_dim = CLIP_DIMS
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=crop).save_pretrained(path)
    return path
