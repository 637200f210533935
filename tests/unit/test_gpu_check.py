"""The GPU check's machinery that needs no model: time budgets, the stage runner's kill,
and the bundle's list of wheels against what the carried packages require."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/

from bench.gpu.bundle import missing_requirements
from bench.gpu.runner import Stage, run_child, skip_reason


def test_a_stage_starts_only_with_its_whole_budget_left() -> None:
    stage = Stage("profile", 120)
    assert skip_reason(stage, 121) is None
    reason = skip_reason(stage, 119.6)
    assert reason is not None
    assert "120 s left" in reason
    assert "budget is 120 s" in reason


def test_a_stage_over_its_budget_is_killed_with_the_reason(tmp_path: Path) -> None:
    started = time.monotonic()
    cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
    result = run_child(cmd, tmp_path / "none.json", "slow", budget=0.5, grace=0.5)
    assert time.monotonic() - started < 30
    assert result["status"] == "killed"
    assert "over its budget" in result["reason"]


def test_a_stage_that_dies_without_a_result_is_an_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "raise SystemExit(3)"]
    result = run_child(cmd, tmp_path / "none.json", "broken", budget=30)
    assert result["status"] == "error"
    assert "exited with 3" in result["reason"]


def test_the_bundle_carries_every_requirement_the_machine_lacks() -> None:
    # At this environment's versions: a fastapi or pydantic upgrade that needs a new package
    # fails here, not on the GPU machine.
    assert missing_requirements() == []
