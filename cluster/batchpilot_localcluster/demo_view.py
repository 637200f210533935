"""What ``make demo`` shows: the live view, the summary per load phase and the plot.

Pure presentation of a :class:`DemoPart` and its :class:`ScenarioResult`; no cluster access.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchpilot_localcluster.loadgen import LoadReport, RateSchedule
from batchpilot_localcluster.scenario import ScenarioResult, StatusSample


@dataclass(frozen=True)
class Phase:
    """A named stretch of the load: ``[start, end)`` seconds, its rate in words."""

    name: str
    start: float
    end: float
    rate: str


@dataclass(frozen=True)
class DemoPart:
    """One BatchedModel of the demo under its own load."""

    name: str
    title: str
    manifest: dict[str, Any]
    rate: RateSchedule
    phases: tuple[Phase, ...]
    target_ms: float
    plot_file: str

    @property
    def duration(self) -> float:
        return self.phases[-1].end

    def phase_at(self, t: float) -> str:
        return next((p.name for p in self.phases if t < p.end), self.phases[-1].name)


def bar(done: float, total: float, width: int = 30) -> str:
    filled = int(width * min(1.0, done / total))
    return "#" * filled + "." * (width - filled)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def wrap(text: str, width: int, indent: str) -> list[str]:
    out: list[str] = []
    line = indent
    for word in text.split():
        if len(line) + len(word) + 1 > width and line.strip():
            out.append(line)
            line = indent
        line += ("" if line == indent else " ") + word
    if line.strip():
        out.append(line)
    return out[:4]


@dataclass
class View:
    """What the live display shows; redrawn once a second (a line every 5 s without a TTY)."""

    part: DemoPart
    namespace: str
    tty: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    last_plain: float = -10.0

    def render(self, sample: StatusSample, result: ScenarioResult) -> None:
        part, t = self.part, sample.t
        recent = [o for o in result.load.outcomes if o.sent_at >= t - 5.0]
        p95 = LoadReport.p95_ms(recent)
        outcomes = result.load.outcomes
        ok = sum(1 for o in outcomes if o.status == 200)
        rejected = sum(1 for o in outcomes if o.status == 429)
        failed = len(outcomes) - ok - rejected
        batch = fmt(sample.max_batch_size, "d") if sample.max_batch_size is not None else "-"
        if not self.tty:
            if t - self.last_plain >= 5.0:
                self.last_plain = t
                print(
                    f"{part.name}: t={t:4.0f}s {part.phase_at(t):<6} load "
                    f"{part.rate(t):4.0f}/s p95 {fmt(p95, '.0f'):>5} ms | READY "
                    f"{sample.ready}/{sample.desired} BATCH {batch} WAIT-MS "
                    f"{fmt(sample.max_wait_ms, 'g')} | {sample.action}",
                    flush=True,
                )
            return
        width = shutil.get_terminal_size((100, 30)).columns
        lines = [
            f"batchpilot demo: {part.title}",
            f"[{bar(t, part.duration)}] {t:4.0f}/{part.duration:.0f} s  phase: {part.phase_at(t)}",
            f"load: {part.rate(t):.0f} req/s offered, client p95 (last 5 s) {fmt(p95, '.0f')} ms, "
            f"target {part.target_ms:g} ms | ok {ok}, 429 {rejected}, failed {failed}",
            "",
            f"$ kubectl get bm {part.name} -n {self.namespace}",
            f"{'NAME':<14} {'READY':<6} {'BATCH':<6} {'WAIT-MS':<8} {'QUEUE':<6} {'RPS':<6} "
            f"{'P95-MS':<7} STATUS",
            f"{part.name:<14} {f'{sample.ready}/{sample.desired}':<6} {batch:<6} "
            f"{fmt(sample.max_wait_ms, 'g'):<8} {fmt(sample.queue_depth):<6} "
            f"{fmt(sample.requests_per_second):<6} {fmt(sample.p95_latency_ms):<7} "
            f"{sample.state}",
            "",
            f"last decision: {sample.action or '-'}",
            *wrap(sample.reason or "", width, "  "),
            "",
            "events (newest last):",
            *(
                f"  {e.get('reason', ''):<14} {e.get('message', '')}"[:width]
                for e in self.events[-8:]
            ),
        ]
        sys.stdout.write("\x1b[H\x1b[J" + "\n".join(line[:width] for line in lines) + "\n")
        sys.stdout.flush()


def _span(values: Sequence[int]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def summarize(part: DemoPart, result: ScenarioResult, events: Sequence[dict[str, Any]]) -> str:
    """A Markdown summary: one row per load phase, then the decisions that changed things."""
    rows = [
        "| phase | load req/s | answered ok | client p95 ms | within target | replicas | "
        "max batch size |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase in part.phases:
        window = result.load.window(phase.start, phase.end)
        samples = [s for s in result.samples if phase.start <= s.t < phase.end]
        sizes = sorted({s.max_batch_size for s in samples if s.max_batch_size is not None})
        rows.append(
            f"| {phase.name} ({phase.start:.0f}-{phase.end:.0f} s) | {phase.rate} | "
            f"{sum(1 for o in window if o.status == 200)} | "
            f"{fmt(LoadReport.p95_ms(window), '.0f')} | "
            f"{result.within(part.target_ms, phase.start, phase.end):.1%} | "
            f"{_span([s.desired for s in samples])} | "
            f"{', '.join(str(s) for s in sizes) or '-'} |"
        )
    replica_seconds = sum(s.desired for s in result.samples)  # one sample a second
    decisions = [
        f"- {e.get('reason')}: {e.get('message')}"
        for e in events
        if e.get("reason") in ("ScaledUp", "ScaledDown", "Retuned", "ConfigInForce")
    ]
    return "\n".join(
        [
            f"## {part.title}",
            "",
            f"BatchedModel `{part.name}`, target p95 {part.target_ms:g} ms. Overall "
            f"{result.within(part.target_ms):.1%} of the {len(result.load.outcomes)} requests "
            f"answered within it; about {replica_seconds} replica-seconds.",
            "",
            *rows,
            "",
            "Decisions (Events on the BatchedModel):",
            "",
            *decisions,
        ]
    )


def plot(part: DemoPart, result: ScenarioResult, path: Path) -> None:
    """Load, p95, replicas and batch size over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result.samples
    ts = [s.t for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    load, lat, reps, batch = axes
    load.plot(ts, [part.rate(t) for t in ts], label="offered", color="grey")
    load.plot(ts, [s.requests_per_second for s in samples], label="observed by the operator")
    load.set_ylabel("req/s")
    load.legend(loc="upper right")
    windows = list(range(0, int(ts[-1]) if ts else 0, 5))
    lat.plot(
        windows,
        [result.p95_ms(t, t + 5) for t in windows],
        label="client p95 (5 s windows)",
        marker=".",
    )
    lat.plot(ts, [s.p95_latency_ms for s in samples], label="operator's p95 (per interval)")
    lat.axhline(part.target_ms, color="red", linestyle="--", label="target")
    lat.set_ylabel("ms")
    lat.set_yscale("log")
    lat.set_ylim(top=part.target_ms * 3)
    lat.legend(loc="upper right")
    reps.step(ts, [s.desired for s in samples], where="post", label="desired")
    reps.step(ts, [s.ready for s in samples], where="post", label="ready")
    reps.set_ylabel("replicas")
    reps.set_ylim(0, max((s.desired for s in samples), default=1) + 0.5)
    reps.yaxis.get_major_locator().set_params(integer=True)
    reps.legend(loc="upper right")
    batch.step(ts, [s.max_batch_size for s in samples], where="post", label="max batch size")
    twin = batch.twinx()
    twin.step(
        ts, [s.max_wait_ms for s in samples], where="post", color="tab:orange", label="max wait"
    )
    twin.set_ylabel("max wait ms", color="tab:orange")
    batch.set_ylabel("max batch size")
    batch.set_xlabel("seconds")
    for ax in axes:
        for phase in part.phases[1:]:
            ax.axvline(phase.start, color="lightgrey", linewidth=0.8)
    fig.suptitle(f"batchpilot demo: {part.title}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
