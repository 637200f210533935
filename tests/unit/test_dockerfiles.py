"""The Dockerfiles name their base image once, as an ARG every FROM goes through, in a form
``make pin-images`` can pin by digest (scripts/pin_base_images.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32


def load_script() -> ModuleType:
    path = ROOT / "scripts" / "pin_base_images.py"
    spec = importlib.util.spec_from_file_location("pin_base_images", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pin = load_script()


@pytest.mark.parametrize("dockerfile", pin.DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_from_goes_through_a_base_image_arg(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    args = pin.base_image_args(text)
    assert args, f"{dockerfile}: no *_IMAGE ARG before the first FROM"
    stages = {line.split()[-1] for line in text.splitlines() if " AS " in line.upper()}
    for source in pin.from_sources(text):
        if source in stages:
            continue  # an earlier stage of the same file
        assert source.startswith("${"), f"FROM {source}: use an ARG"
        assert source.endswith("}"), f"FROM {source}: use an ARG"
        assert source[2:-1] in args, f"FROM {source}: not a base image ARG"
    for name, ref in args.items():
        assert pin.REFERENCE.match(ref), f"{name}={ref}: name:tag[@sha256:...]"
        assert not ref.split("@")[0].endswith(":latest"), f"{name}: a moving tag"


def test_pin_writes_the_digest_next_to_the_tag_and_repins() -> None:
    text = "ARG PYTHON_IMAGE=python:3.12-slim\n\nFROM ${PYTHON_IMAGE} AS build\n"
    text += "FROM ${PYTHON_IMAGE}\n"
    assert pin.unpinned(text) == ["PYTHON_IMAGE"]
    asked: list[str] = []

    def resolver(image: str) -> str:
        asked.append(image)
        return DIGEST

    pinned = pin.pin(text, resolver)
    assert pinned.splitlines()[0] == f"ARG PYTHON_IMAGE=python:3.12-slim@{DIGEST}"
    assert pin.unpinned(pinned) == []
    # Re-pinning resolves the tag again, not the old digest.
    newer = "sha256:" + "cd" * 32
    assert pin.pin(pinned, lambda image: newer).splitlines()[0].endswith(f"slim@{newer}")
    assert asked == ["python:3.12-slim"]
    assert pin.from_sources(pinned) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_a_base_image_without_a_tag_is_refused() -> None:
    with pytest.raises(SystemExit, match="name:tag"):
        pin.pin("ARG CUDA_IMAGE=nvidia/cuda\nFROM ${CUDA_IMAGE}\n", lambda image: DIGEST)
