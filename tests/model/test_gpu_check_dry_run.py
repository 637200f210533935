"""The GPU check's dry run end to end: the script a GPU machine runs, on the CPU at small
sizes with the memory figures faked at the boundary, so the GPU check cannot rot between
GPU runs. One run (about a minute and a half on two cores); each test reads its report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchpilot_runtime.backends.emulated import load_profile_file

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["prepare", "equivalence", "memory", "profile", "benchmark"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu-check")
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        # No bundle: CI has none, and the dry run must not depend on one (a bundle made
        # here would only change where the tokenizer files come from).
        "GPU_BUNDLE": str(out / "no-bundle"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu" / "gpu-check.sh"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    if done.returncode != 0 or not (out / "report.json").is_file():
        pytest.fail(f"dry run exited with {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr}")
    return out, json.loads((out / "report.json").read_text()), done.stdout


def test_every_stage_passes_within_its_budget(run: tuple[Path, dict[str, Any], str]) -> None:
    out, report, _ = run
    assert report["mode"] == "dry-run"
    assert report["ok"] is True
    assert report["complete"] is True
    assert list(report["stages"]) == STAGES
    for name, stage in report["stages"].items():
        assert stage["status"] == "passed", (name, stage.get("reason"), stage["checks"])
        assert stage["checks"], name
        assert all(c["ok"] for c in stage["checks"]), name
        assert stage["seconds"] <= stage["budget"], name
    assert report["seconds"] < report["time_limit"]
    assert report["machine"]["cuda_available"] is False  # the dry run hides any GPU
    assert {"report.json", "summary.md", "gpu-check.log"} <= set(report["files"])
    assert (out / "gpu-check.log").read_text().strip()


def test_served_embeddings_match_the_cpu_reference(run: tuple[Path, dict[str, Any], str]) -> None:
    data = run[1]["stages"]["equivalence"]["data"]
    for dtype in ("float32", "float16"):
        row, tolerance = data[dtype], data["tolerances"][dtype]
        assert [w["device"] for w in row["workers"]] == ["cpu"]
        assert row["max_abs_diff"] <= tolerance["max_abs"]
        assert row["min_cosine"] >= tolerance["min_cosine"]
    # float16 really ran in half precision: not bit-equal to the float32 reference.
    assert data["float16"]["max_abs_diff"] > data["float32"]["max_abs_diff"]


def test_the_probe_cap_follows_the_memory_figures(run: tuple[Path, dict[str, Any], str]) -> None:
    data = run[1]["stages"]["memory"]["data"]
    limited = data["limited"]
    budget = int(limited["limit_bytes"] * limited["headroom"])
    expected = (budget - limited["at_rest_bytes"]) // limited["per_item_bytes"]
    assert limited["cap"] == expected
    assert limited["peak_at_cap"] <= limited["limit_bytes"]
    assert limited["double_fits"] is False
    assert data["full_device"]["cap"] == data["full_device"]["probe_limit"]
    split = data["split"]
    assert split["splits"] >= 1
    assert split["answered"] == split["submitted"] == 2 * limited["cap"]
    assert split["items_failed"] == 0


def test_the_profiles_load_as_emulated_accelerators(run: tuple[Path, dict[str, Any], str]) -> None:
    out, report, _ = run
    shapes = report["stages"]["profile"]["data"]["shapes"]
    assert list(shapes) == ["tiny-minilm", "tiny-base", "tiny-large"]
    for row in shapes.values():
        profile = load_profile_file(out / row["file"])
        assert profile.measured is True
        assert profile.per_item_ms > 0
        assert profile.max_batch == row["max_batch"]
        assert len(profile.spread.ratios) == row["timed_batches"]
        assert math.isclose(profile.base_ms, row["base_ms"])


def test_the_benchmark_ran_every_level(run: tuple[Path, dict[str, Any], str]) -> None:
    data = run[1]["stages"]["benchmark"]["data"]
    levels = data["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    assert [lv["processes"] for lv in levels] == [1, 2]  # one, and several client processes
    for lv in levels:
        assert set(lv["statuses"]) == {"200"}
        assert lv["requests"] > 0
        assert lv["offline_items_per_s"] > 0
    assert data["offline"]["single_forward_ms"] > 0
    assert "saturation_ratio" in data


def test_the_summary_names_every_stage(run: tuple[Path, dict[str, Any], str]) -> None:
    out, _, stdout = run
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check (dry-run)")
    for name in STAGES:
        assert f"| {name} | passed |" in summary
    assert "report:" in stdout
