"""``status``: what the reconciler and the tuning loop report."""

from __future__ import annotations

from pydantic import (
    Field,
)
from pydantic.config import JsonDict

from batchpilot_operator.api.base import (
    ConditionStatus,
    _Base,
)


class Condition(_Base):
    """One aspect of the BatchedModel's state (Kubernetes condition conventions)."""

    type: str = Field(
        max_length=316, description="Ready, Progressing or Degraded (CamelCase by convention)."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024, description="One CamelCase word for machines, e.g. CrashLoopBackOff."
    )
    message: str = Field(default="", max_length=32768, description="Details for humans.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was set for."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When status last changed (not when reason or message did).",
    )


class LastDecision(_Base):
    """The tuning loop's last decision."""

    time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When it decided."
    )
    action: str | None = Field(
        default=None, max_length=256, description="What it changed, or hold."
    )
    reason: str | None = Field(default=None, max_length=4096, description="Why.")
    needed_replicas: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The replicas the observed load needs now, within the bounds. The Deployment "
            "keeps more while a scale-down waits for autoscaling.scaleDownDelaySeconds. "
            "Absent when the decision sized nothing (metrics missing or too few)."
        ),
    )


class SpecBasis(_Base):
    """The spec values a tuned state was last started from."""

    replicas: int = Field(ge=0, description="spec.replicas.")
    max_batch_size: int = Field(ge=1, description="spec.batching.maxBatchSize.")
    max_wait_ms: float = Field(ge=0.0, description="spec.batching.maxWaitMs.")


class TunedStatus(_Base):
    """The operator's current tuned state: the values its builders render the children from."""

    replicas: int = Field(ge=0, description="Replicas set on the Deployment.")
    max_batch_size: int = Field(ge=1, description="maxBatchSize written to the ConfigMap.")
    max_wait_ms: float = Field(ge=0.0, description="maxWaitMs written to the ConfigMap.")
    config_generation: int = Field(
        ge=0, description="generation of the ConfigMap's batching config."
    )
    from_spec: SpecBasis | None = Field(
        default=None,
        description=(
            "The spec values these were started from: an edit of spec.replicas or "
            "spec.batching restarts the tuning from the new value."
        ),
    )


class Recommendation(_Base):
    """One replica recommendation of the tuning loop (the scale-down window)."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it was made.")
    replicas: int = Field(ge=0, description="The replicas the load needed then.")


MAX_RECOMMENDATIONS = 128
"""Most recommendations kept in status.loop (the newest; consecutive equal ones are kept as
the first and last of their run)."""


_TIME: JsonDict = {"format": "date-time"}


class LoopStatus(_Base):
    """The tuning loop's state, written only by the loop: the knobs it set, the spec values
    they started from, and what its policy remembers between ticks. A new operator process
    resumes from it."""

    replicas: int | None = Field(default=None, ge=0, description="Replicas the loop set.")
    max_batch_size: int | None = Field(default=None, ge=1, description="maxBatchSize the loop set.")
    max_wait_ms: float | None = Field(default=None, ge=0.0, description="maxWaitMs the loop set.")
    from_spec: SpecBasis | None = Field(
        default=None,
        description=(
            "The spec values the loop's knobs started from: an edit of spec.replicas or "
            "spec.batching since then wins over the loop's value."
        ),
    )
    utilization_target: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description=(
            "Busy share replicas are sized for, moved by the measured p95 (the headroom)."
        ),
    )
    scale_down_delay_seconds: float | None = Field(
        default=None,
        ge=0.0,
        description="The scale-down delay in force: the spec's, lengthened after flaps.",
    )
    last_scale_up: str | None = Field(
        default=None, json_schema_extra=_TIME, description="When the loop last added replicas."
    )
    last_scale_down: str | None = Field(
        default=None, json_schema_extra=_TIME, description="When it last removed replicas."
    )
    last_config_change: str | None = Field(
        default=None, json_schema_extra=_TIME, description="When it last changed the config."
    )
    last_overload: str | None = Field(
        default=None, json_schema_extra=_TIME, description="When a window last showed overload."
    )
    last_miss: str | None = Field(
        default=None,
        json_schema_extra=_TIME,
        description="When a window last missed the target without overload.",
    )
    last_no_room: str | None = Field(
        default=None,
        json_schema_extra=_TIME,
        description="When a pod's start-up last slowed the serving pods (they share compute).",
    )
    no_room_replicas: int | None = Field(
        default=None,
        ge=1,
        description="The replicas that served then: the most the loop runs for a while.",
    )
    slowdown_at_scale_up: float | None = Field(
        default=None,
        ge=0.0,
        description="How much slower than the service-time fit the pods ran when the loop"
        " last scaled up.",
    )
    recommendations: list[Recommendation] | None = Field(
        default=None,
        max_length=MAX_RECOMMENDATIONS,
        description="Recent replica recommendations, oldest first (the scale-down window).",
    )


class BatchedModelStatus(_Base):
    """The observed state of a BatchedModel, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the operator last reconciled."
    )
    replicas: int | None = Field(
        default=None, ge=0, description="Runtime pods that exist (the scale subresource's)."
    )
    ready_replicas: int | None = Field(default=None, ge=0, description="Runtime pods ready.")
    ready: str | None = Field(
        default=None, description="Ready replicas over desired replicas, for example 1/2."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the runtime pods (for the scale API)."
    )
    max_batch_size: int | None = Field(
        default=None, description="maxBatchSize of the batching config in force."
    )
    max_wait_ms: float | None = Field(
        default=None, description="maxWaitMs of the batching config in force."
    )
    config_generation: int | None = Field(
        default=None, description="generation of the batching config in force."
    )
    requests_per_second: float | None = Field(
        default=None, description="Request arrival rate over the last observation window."
    )
    queue_depth: float | None = Field(
        default=None, description="Requests waiting for a batch, summed over replicas."
    )
    avg_batch_size: float | None = Field(
        default=None, description="Mean executed batch size over the last window."
    )
    p95_latency_ms: float | None = Field(
        default=None, description="95th percentile request latency over the last window."
    )
    last_decision: LastDecision | None = Field(
        default=None, description="The tuning loop's last decision."
    )
    tuned: TunedStatus | None = Field(
        default=None,
        description="The operator's tuned state (replicas, batch size, wait, config generation).",
    )
    loop: LoopStatus | None = Field(
        default=None,
        description=(
            "The tuning loop's state: the knobs it set and its memory (resumed from after an "
            "operator restart)."
        ),
    )
    emulated: str | None = Field(
        default=None,
        description=(
            "The service-time profile the replicas emulate (spec.model.uri emulated://PROFILE): "
            "no model runs on them. Absent for a real model."
        ),
    )
    conditions: list[Condition] | None = Field(
        default=None, description="Ready, Progressing and Degraded, with reasons."
    )
