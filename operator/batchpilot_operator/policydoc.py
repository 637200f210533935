"""The reference page of the tuning policy, generated from its code: the stages, the
regimes, every rule with the text it writes into ``status.lastDecision.reason``, and every
constant of :class:`~batchpilot_operator.policy.TuningSpec`. A page generated from the
enums cannot drift from what the policy does (``make docs`` writes it, a test checks it)."""

from __future__ import annotations

import dataclasses

from batchpilot_operator.docgen_common import attribute_docs, header, table
from batchpilot_operator.policy import Regime, Rule, Stage, TuningSpec

API_FIELDS = {
    "latency_target_ms": "latencyTargetMs",
    "min_replicas": "minReplicas",
    "max_replicas": "maxReplicas",
    "min_batch_size": "minBatchSize",
    "max_batch_size": "maxBatchSize",
    "min_wait_ms": "minWaitMs",
    "max_wait_ms": "maxWaitMs",
    "interval_s": "intervalSeconds",
    "scale_down_delay_s": "scaleDownDelaySeconds",
}
"""The spec fields that come from ``spec.autoscaling`` (the rest are the policy's own)."""


def policy_page() -> str:
    """Markdown: the stages, regimes, rules and constants of the tuning policy."""
    out = header("Tuning policy", "`operator/batchpilot_operator/policy/`")
    out += (
        "Every tick, `decide()` runs four stages; each rule that fires is recorded in the "
        "decision and named in `status.lastDecision.reason`. See "
        "[the tuning loop](../concepts/tuning-loop.md) for the ideas.\n\n## Stages\n\n"
    )
    stage_docs = attribute_docs(Stage)
    out += table(
        ["stage", "module", "what it does"],
        [[f"`{s.value}`", f"`policy/{s.value}.py`", stage_docs[s.name]] for s in Stage],
    )
    out += "\n## Regimes\n\nOne per window.\n\n"
    regime_docs = attribute_docs(Regime)
    out += table(["regime", "meaning"], [[f"`{r.value}`", regime_docs[r.name]] for r in Regime])
    out += "\n## Rules\n\nIn the order the stages run them; `{...}` is filled from the window.\n\n"
    out += table(
        ["rule", "stage", "reason text"],
        [[f"`{r.value}`", r.stage.value, f"`{r.text}`"] for r in Rule],
    )
    out += (
        "\n## Constants\n\nThe bounds come from `spec.autoscaling`; the rest are the "
        "policy's own and not part of the API.\n\n"
    )
    docs = attribute_docs(TuningSpec)
    rows = []
    for f in dataclasses.fields(TuningSpec):
        source = f"`spec.autoscaling.{API_FIELDS[f.name]}`" if f.name in API_FIELDS else "policy"
        rows.append([f"`{f.name}`", f"`{f.default!r}`", source, docs.get(f.name, "")])
    out += table(["constant", "default", "from", "meaning"], rows)
    return out
