"""The Markdown summary of a GPU check's report (the JSON report holds every figure)."""

from __future__ import annotations

from typing import Any

from bench.gpu.common import Json


def _machine(report: Json) -> str:
    machine = report.get("machine") or {}
    gpus = machine.get("gpus") or []
    if gpus:
        names = ", ".join(f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB)" for g in gpus)
        return f"{names}; torch CUDA {machine.get('torch_cuda')}, {machine.get('cpus')} CPUs"
    return f"CPU only, {machine.get('cpus')} CPUs (dry run)" if machine else "unknown"


def _versions(report: Json) -> str:
    packages = report.get("packages") or {}
    return ", ".join(f"{name} {info.get('version', 'missing')}" for name, info in packages.items())


def _equivalence(data: Json) -> list[str]:
    lines = [
        "| dtype | workers | max abs diff | tolerance | min cosine | tolerance | start-up s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for dtype, tol in (data.get("tolerances") or {}).items():
        row = data.get(dtype)
        if not row:
            continue
        devices = ", ".join(str(w["device"]) for w in row["workers"])
        lines.append(
            f"| {dtype} | {devices} | {row['max_abs_diff']:.2e} | {tol['max_abs']:.0e} | "
            f"{row['min_cosine']:.7f} | {tol['min_cosine']} | {row['startup_seconds']:.1f} |"
        )
    return lines


def _memory(data: Json) -> list[str]:
    full, limited, split = data.get("full_device"), data.get("limited"), data.get("split")
    lines = []
    if full:
        lines.append(
            f"- Whole device: the probe's cap is **{full['cap']}** (limit {full['probe_limit']}) "
            f"in {full['seconds']:.1f} s, peak {_bytes(full['peak_at_cap'])} of "
            f"{_bytes(full['capacity'])}."
        )
    if limited:
        lines.append(
            f"- Limited to {_bytes(limited['limit_bytes'])} ({_bytes(limited['at_rest_bytes'])} "
            f"at rest, about {_bytes(limited['per_item_bytes'])} per longest input): cap "
            f"**{limited['cap']}**, peak at the cap {_bytes(limited['peak_at_cap'])}; twice the "
            f"cap {'ran' if limited['double_fits'] else 'ran out of memory'}."
        )
    if split:
        lines.append(
            f"- Forced out-of-memory: {split['answered']}/{split['submitted']} answered after "
            f"{split['splits']} split(s) in {split['batches']} batches; min cosine to small "
            f"batches {split['min_cosine_to_small_batches']:.6f}."
        )
    return lines


def _profiles(data: Json) -> list[str]:
    lines = [
        "| shape | t(b) ms | b=1 ms | b=max ms | cap | load s | file |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, row in (data.get("shapes") or {}).items():
        medians = row["median_ms"]
        first, last = next(iter(medians)), list(medians)[-1]
        lines.append(
            f"| {name} | {row['base_ms']:.3f} + {row['per_item_ms']:.4f} b | "
            f"{medians[first]:.2f} | {medians[last]:.2f} (b={last}) | {row['max_batch']} | "
            f"{row['load_seconds']:.1f} | `{row['file']}` |"
        )
    return lines


def _benchmark(data: Json) -> list[str]:
    off = data.get("offline") or {}
    lines = [
        f"maxBatchSize {data.get('batch')}, maxWaitMs {data.get('max_wait_ms')}; "
        f"{data.get('seconds')} s per level after {data.get('warmup')} s of warm-up; one "
        f"single-item forward {off.get('single_forward_ms', float('nan')):.2f} ms.",
        "",
        "| clients | items/s | offline items/s | ratio | avg batch | model busy | p50 ms "
        "| p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in data.get("levels") or []:
        lines.append(
            f"| {lv['concurrency']} | {lv['throughput']:.0f} | {lv['offline_items_per_s']:.0f} | "
            f"{lv['throughput'] / lv['offline_items_per_s']:.2f} | {lv['avg_batch_size']:.1f} | "
            f"{100 * lv['model_busy']:.0f}% | {lv['p50_ms']:.2f} | {lv['p99_ms']:.2f} |"
        )
    if "saturation_ratio" in data:
        lines += [
            "",
            f"- Saturation throughput / offline limit: **{data['saturation_ratio']:.2f}** "
            "(target >= 0.9).",
            f"- p50 at one client minus one forward: "
            f"**{data['p50_one_client_minus_forward_ms']:+.2f} ms** (target <= 3 ms).",
        ]
    return lines


SECTIONS = {
    "equivalence": ("Embeddings on the device against the CPU", _equivalence),
    "memory": ("Memory probe and out-of-memory split", _memory),
    "profile": ("Service-time profiles", _profiles),
    "benchmark": ("Runtime benchmark", _benchmark),
}


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "n/a"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:.0f} B"


def _outcome(report: Json) -> str:
    if report["complete"]:
        return "passed"
    return "passed, incomplete (see the skipped stages)" if report["ok"] else "FAILED"


def summary(report: Json) -> str:
    """The summary: outcome per stage, every failed check, and each stage's headline table."""
    stages: dict[str, Json] = report["stages"]
    lines = [
        f"# GPU check ({report['mode']})",
        "",
        f"{report['date']}; {_machine(report)}; {report['seconds']:.0f} s of a "
        f"{report['time_limit']:.0f} s limit. Model for serving: {report.get('model')}.",
        "",
        f"Outcome: **{_outcome(report)}**.",
        "",
        "| stage | status | seconds | checks | note |",
        "|---|---|---:|---:|---|",
    ]
    for name, st in stages.items():
        checks = st.get("checks") or []
        passed = sum(1 for c in checks if c["ok"])
        note = st.get("reason") or ""
        lines.append(
            f"| {name} | {st['status']} | {st.get('seconds', 0):.1f} | "
            f"{passed}/{len(checks)} | {note} |"
        )
    failed = [(n, c) for n, st in stages.items() for c in st.get("checks") or [] if not c["ok"]]
    if failed:
        lines += ["", "Failed checks:", ""]
        lines += [f"- {n}: {c['name']}: {c['detail']}" for n, c in failed]
    for name, (title, render) in SECTIONS.items():
        data = (stages.get(name) or {}).get("data")
        if data:
            lines += ["", f"## {title}", "", *render(data)]
    lines += ["", f"Packages: {_versions(report)}.", ""]
    return "\n".join(lines)
