"""The GPU check (``make gpu-check``): every stage in turn, each in its own process within its
time budget, then one JSON report and a Markdown summary in the output folder.

    python -m bench.gpu.check                # on a GPU machine (bench/gpu/README.md)
    python -m bench.gpu.check --dry-run      # the same code on the CPU, small, in CI

Exit status 0 when every stage that ran passed (a stage skipped for time is recorded, and
makes the report's ``complete`` false), 1 when a check failed or a stage broke.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu.common import DRY_RUN_SIZES, GPU_SIZES, Context, Json, say, write_json
from bench.gpu.report import summary
from bench.gpu.runner import Stage, run_child, skip_reason, stage_command

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / ".gpu-check-out"
DEFAULT_BUNDLE = ROOT / ".gpu-bundle"

GPU_STAGES = (
    Stage("prepare", 45),
    Stage("equivalence", 100),
    Stage("memory", 60),
    Stage("profile", 120),
    Stage("benchmark", 140),
)
GPU_TIME_LIMIT = 470.0
"""Seconds for all stages on a GPU; with each stage's kill grace the run stays under ten
minutes even when every stage runs over."""
DRY_RUN_STAGES = (
    Stage("prepare", 60),
    Stage("equivalence", 120),
    Stage("memory", 60),
    Stage("profile", 90),
    Stage("benchmark", 120),
)
DRY_RUN_TIME_LIMIT = 450.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu.check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, small sizes, faked memory")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or DEFAULT_OUT),
        help="folder for report.json, summary.md and the profiles (default: $OUT, else "
        ".gpu-check-out/)",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=DEFAULT_BUNDLE,
        help="the folder `make gpu-bundle` prepared (wheels, tokenizer, weights)",
    )
    parser.add_argument("--time-limit", type=float, default=None, help="seconds for all stages")
    parser.add_argument(
        "--stages", default=None, help="comma-separated subset (prepare always runs)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.time()
    stages: tuple[Stage, ...] = DRY_RUN_STAGES if args.dry_run else GPU_STAGES
    if args.stages:
        wanted = {"prepare", *args.stages.split(",")}
        stages = tuple(s for s in stages if s.name in wanted)
    limit = args.time_limit or (DRY_RUN_TIME_LIMIT if args.dry_run else GPU_TIME_LIMIT)
    if args.dry_run:
        # The runtime's --device auto must find no GPU; the dry run is the CPU path.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in [
        *args.out.glob("profile-*.json"),
        args.out / "report.json",
        args.out / "summary.md",
    ]:
        stale.unlink(missing_ok=True)  # only the files a run writes: a rerun never mixes runs
    bundle = str(args.bundle) if args.bundle.is_dir() else None
    results: list[Json] = []
    with tempfile.TemporaryDirectory(prefix="batchpilot-gpu-check-") as tmp:
        work = Path(tmp)
        ctx = Context(
            dry_run=args.dry_run,
            device="cpu" if args.dry_run else "cuda",
            work=str(work),
            out=str(args.out),
            bundle=bundle,
            deadline=0.0,
            sizes=DRY_RUN_SIZES if args.dry_run else GPU_SIZES,
        )
        for stage in stages:
            left = limit - (time.time() - started)
            reason = skip_reason(stage, left)
            if results and results[0]["status"] != "passed":
                reason = "skipped: the prepare stage did not pass"
            if reason:
                say(f"== {stage.name}: {reason}")
                results.append(
                    {"name": stage.name, "status": "skipped", "reason": reason, "checks": []}
                )
                continue
            say(f"== {stage.name} (budget {stage.budget:.0f} s)")
            ctx = dataclasses.replace(ctx, deadline=time.time() + stage.budget - 5)
            ctx_file, result_file = (
                work / f"{stage.name}.context.json",
                work / f"{stage.name}.result.json",
            )
            ctx_file.write_text(ctx.to_json())
            result = run_child(
                stage_command(stage.name, ctx_file, result_file),
                result_file,
                stage.name,
                stage.budget,
            )
            result["budget"] = stage.budget
            results.append(result)
            say(f"== {stage.name}: {result['status']} in {result.get('seconds', 0):.1f} s")
            shared = (result.get("data") or {}).get("shared")
            if shared:
                ctx = dataclasses.replace(ctx, shared={**ctx.shared, **shared})
    report = build_report(args, results, started, limit, bundle)
    write_json(args.out / "report.json", report)
    (args.out / "summary.md").write_text(summary(report))
    say(f"report: {args.out / 'report.json'}; summary: {args.out / 'summary.md'}")
    return 0 if report["ok"] else 1


def build_report(
    args: argparse.Namespace, results: list[Json], started: float, limit: float, bundle: str | None
) -> Json:
    """The one JSON document of the run: every stage's outcome, checks and figures."""
    prepare = next((r.get("data") or {} for r in results if r["name"] == "prepare"), {})
    broken = [r["name"] for r in results if r["status"] in ("failed", "error", "killed")]
    return {
        "mode": "dry-run" if args.dry_run else "gpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "time_limit": limit,
        "ok": not broken,
        "complete": not broken and all(r["status"] == "passed" for r in results),
        "broken": broken,
        "bundle": bundle,
        "machine": prepare.get("machine"),
        "packages": prepare.get("packages"),
        "model": (prepare.get("shared") or {}).get("weights"),
        "stages": {r["name"]: r for r in results},
        "files": sorted({"report.json", "summary.md", *(p.name for p in args.out.iterdir())}),
    }


if __name__ == "__main__":
    sys.exit(main())
