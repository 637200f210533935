"""The status fields the tuning loop writes (see :mod:`batchpilot_operator.ownership`):
the last observation, the config in force, the last decision. Pure."""

from __future__ import annotations

from typing import Any

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator import api
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.conditions import now_rfc3339
from batchpilot_operator.metrics import Observation
from batchpilot_operator.ownership import state_to_render
from batchpilot_operator.policy import Decision


def in_force_config(obs: Observation, spec: api.BatchedModelSpec) -> BatchingConfig | None:
    """The batching config the pods report running: the oldest generation among them, so
    status never shows a config as in force before every pod runs it. None if none report."""
    reported = [
        (c.generation, c.max_batch_size, c.max_wait_s)
        for c in obs.configs.values()
        if c.generation is not None and c.max_batch_size is not None and c.max_wait_s is not None
    ]
    if not reported:
        return None
    generation, size, wait_s = min(reported)
    return BatchingConfig(
        max_batch_size=size,
        max_wait_ms=round(wait_s * 1000.0, 3),
        max_queue=spec.batching.max_queue,
        request_timeout_ms=spec.batching.request_timeout_ms,
        generation=generation,
    )


def in_force_status(obs: Observation, bm: BatchedModel) -> dict[str, Any]:
    """``status.maxBatchSize``, ``maxWaitMs`` and ``configGeneration``: the config the pods
    report in force; until one reports, the config written (if status shows none yet)."""
    config = in_force_config(obs, bm.spec)
    if config is None and bm.status.config_generation is None and bm.status.tuned is not None:
        written = TunedState.from_status(bm.status)
        config = written.batching_config(bm.spec) if written is not None else None
    if config is None:
        return {}
    return {
        "maxBatchSize": config.max_batch_size,
        "maxWaitMs": config.max_wait_ms,
        "configGeneration": config.generation,
    }


def decision_stands(read: BatchedModel, fresh: BatchedModel, running: TunedState) -> bool:
    """Whether a decision made from ``read`` (rendering ``running``) still holds for
    ``fresh``, the object as it is now: no spec edit, the same knobs and generation rendered,
    and no other write of the loop's state."""
    return (
        fresh.metadata.generation == read.metadata.generation
        and state_to_render(fresh) == running
        and fresh.status.loop == read.status.loop
    )


def observation_status(obs: Observation | None) -> dict[str, Any]:
    """The status fields that show the last window (empty when it covered no pod).
    Rounded, so that status changes only with the load, not with noise in the last digit."""
    if obs is None or obs.pods_paired == 0:
        return {}
    coverage = obs.pods_paired / max(1, obs.pods_expected)
    out: dict[str, Any] = {
        "requestsPerSecond": round(obs.arrival_rate / coverage, 1),
        "queueDepth": round(obs.queue_depth, 1),
    }
    if obs.mean_batch_size is not None:
        out["avgBatchSize"] = round(obs.mean_batch_size, 1)
    if obs.latency_p95_s is not None:
        out["p95LatencyMs"] = round(obs.latency_p95_s * 1000.0, 1)
    return out


def decision_status(d: Decision) -> dict[str, Any]:
    """``status.lastDecision`` (a need of None clears the one before in the merge patch)."""
    return {
        "time": now_rfc3339(),
        "action": d.action,
        "reason": d.reason[:4096],
        "neededReplicas": d.needed_replicas,
    }
