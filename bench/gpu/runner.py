"""Time budgets: start a stage only when its whole budget is left, and kill it (with every
process it started) when it runs past the budget; either way the reason is recorded."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.gpu.common import Json

GRACE_SECONDS = 15.0
"""Past its budget a stage gets this long to return on its own before it is killed (stages
watch their deadline and stop early; the grace covers the last step in flight)."""


@dataclass(frozen=True)
class Stage:
    name: str
    budget: float
    """Seconds the stage may take, child start-up included."""


def skip_reason(stage: Stage, left: float) -> str | None:
    """Why ``stage`` must not start with ``left`` seconds of the run's limit, if it must not."""
    if left < stage.budget:
        return (
            f"skipped: {left:.0f} s left of the run's time limit, its budget is "
            f"{stage.budget:.0f} s"
        )
    return None


def run_child(
    cmd: list[str], result_file: Path, name: str, budget: float, grace: float = GRACE_SECONDS
) -> Json:
    """Run one stage process; kill its process group after ``budget + grace`` seconds."""
    started = time.monotonic()
    # A session of its own, so that a kill reaches the servers and load generators it started.
    process = subprocess.Popen(cmd, start_new_session=True)
    try:
        process.wait(timeout=budget + grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return {
            "name": name,
            "status": "killed",
            "reason": f"killed after {time.monotonic() - started:.0f} s: over its budget of "
            f"{budget:.0f} s",
            "checks": [],
            "seconds": round(time.monotonic() - started, 2),
        }
    finally:
        # Anything the stage left running (it should have stopped all) goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if not result_file.is_file():
        return {
            "name": name,
            "status": "error",
            "reason": f"the stage process exited with {process.returncode} and no result",
            "checks": [],
            "seconds": round(time.monotonic() - started, 2),
        }
    result: Json = json.loads(result_file.read_text())
    result["wall_seconds"] = round(time.monotonic() - started, 2)
    return result


def stage_command(name: str, ctx_file: Path, result_file: Path) -> list[str]:
    return [sys.executable, "-m", "bench.gpu.stage", name, str(ctx_file), str(result_file)]
