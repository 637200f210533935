"""Stage ``prepare``: what the machine is, where each package came from, and the model
every serving stage uses (saved here, at the start of the run)."""

from __future__ import annotations

import importlib
import os
import platform
from importlib import metadata
from pathlib import Path

from bench.gpu.common import Checks, Context, Json
from bench.gpu.models import prepare_minilm, tokenizer_source

PACKAGES = (
    "torch", "transformers", "tokenizers", "numpy", "fastapi", "starlette", "uvicorn",
    "pydantic", "pydantic_core", "httptools", "uvloop", "httpx", "prometheus_client", "orjson",
)  # fmt: skip


def package_versions() -> Json:
    """Version and location of each package the runtime and the check import."""
    found: Json = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            found[name] = {"missing": str(exc)}
            continue
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = str(getattr(module, "__version__", "?"))
        found[name] = {
            "version": version,
            "from": str(Path(getattr(module, "__file__", "") or "?").parent),
        }
    return found


def machine(device: str) -> Json:
    """The accelerator (or the CPU) and the numeric settings that decide float32 results."""
    import torch

    info: Json = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
            }
            for i in range(torch.cuda.device_count())
        ]
        # TF32 would loosen float32 matmuls to ~1e-3: the float32 comparison depends on it.
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        info["driver_free_total_bytes"] = list(torch.cuda.mem_get_info(0))
    return info


def run(ctx: Context, checks: Checks) -> Json:
    """Describe the machine and save the MiniLM-shaped model; hand its path on."""
    import torch

    versions = package_versions()
    missing = [n for n, v in versions.items() if "missing" in v and n not in ("httptools",)]
    checks.add("packages", not missing, f"missing: {missing}" if missing else "all importable")
    if ctx.device == "cuda":
        count = torch.cuda.device_count()
        checks.add("gpu visible", count > 0, f"{count} GPU(s) visible to torch")
    work = Path(ctx.work)
    model, weights = prepare_minilm(work, ctx.bundle, dry_run=ctx.dry_run)
    checks.add("model saved", (model / "config.json").is_file(), f"{weights} at {model}")
    return {
        "machine": machine(ctx.device),
        "packages": versions,
        "shared": {
            "model": str(model),
            "weights": weights,
            "tokenizer": str(tokenizer_source(ctx.bundle)),
        },
    }
