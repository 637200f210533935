"""The local node's model cache: hf:// URIs resolve to the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from batchpilot_localcluster.modelcache import MINILM_REPO, add_snapshot, seed_minilm


def test_seeded_cache_resolves_like_the_hub_cache(tmp_path: Path) -> None:
    snapshot = seed_minilm(tmp_path)
    assert snapshot is not None
    resolved = Path(snapshot_download(MINILM_REPO, cache_dir=tmp_path, local_files_only=True))
    assert resolved == snapshot
    assert (resolved / "config.json").is_file()
    assert (resolved / "1_Pooling" / "config.json").is_file()
    assert seed_minilm(tmp_path) == snapshot  # idempotent


def test_a_new_snapshot_replaces_main(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text("{}")
    cache = tmp_path / "cache"
    add_snapshot(cache, "org/m", files, "a" * 40)
    second = add_snapshot(cache, "org/m", files, "b" * 40)
    assert Path(snapshot_download("org/m", cache_dir=cache, local_files_only=True)) == second


def test_revision_must_look_like_a_commit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="40-hex"):
        add_snapshot(tmp_path, "org/m", tmp_path, "main")
