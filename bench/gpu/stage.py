"""One stage of the GPU check in its own process: ``python -m bench.gpu.stage NAME CTX OUT``.

A process per stage keeps each stage's device state (a lowered memory fraction, a CUDA
context, cached blocks) from leaking into the next, and lets the check kill a stage that
runs past its budget. The stage writes its result JSON to ``OUT``: ``status`` is ``passed``
when every check passed, ``failed`` when one did not, ``error`` when the stage raised.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.gpu.common import Checks, Context, Json, say, write_json

STAGES = {
    "prepare": "bench.gpu.prepare",
    "equivalence": "bench.gpu.equivalence",
    "memory": "bench.gpu.memory",
    "profile": "bench.gpu.service_profile",
    "benchmark": "bench.gpu.serving",
}


def run_stage(name: str, ctx: Context) -> Json:
    """Run stage ``name`` and describe its outcome (never raises)."""
    checks = Checks()
    started = time.perf_counter()
    result: Json = {"name": name}
    try:
        if ctx.sizes.torch_threads:
            import torch

            torch.set_num_threads(ctx.sizes.torch_threads)
        module: Any = importlib.import_module(STAGES[name])
        result["data"] = module.run(ctx, checks)
        result["status"] = "passed" if all(c.ok for c in checks.items) else "failed"
    except Exception as exc:
        result["status"] = "error"
        result["reason"] = f"{type(exc).__name__}: {exc}"[-4000:]
        result["traceback"] = traceback.format_exc()[-4000:]
        say(traceback.format_exc())
    result["checks"] = checks.to_json()
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def main(argv: list[str]) -> int:
    name, ctx_file, out_file = argv
    ctx = Context.from_json(Path(ctx_file).read_text())
    write_json(Path(out_file), run_stage(name, ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
