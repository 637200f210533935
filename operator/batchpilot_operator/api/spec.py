"""``spec``: what a user asks for (the model, its resources, batching and autoscaling)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from batchpilot_contract import batching, pod
from batchpilot_operator.api.base import (
    ENV_NAME_PATTERN,
    MAX_GPUS_PER_REPLICA,
    MAX_LATENCY_TARGET_MS,
    MAX_REPLICAS_LIMIT,
    MODEL_URI_PATTERN,
    QUANTITY_PATTERN,
    RESERVED_ENV,
    RESERVED_ENV_MESSAGE,
    RESOURCE_NAME_PATTERN,
    RUNTIME_TUNING_ENV,
    Dtype,
    LabelValue,
    Task,
    _Base,
    _cel,
    _cel_list,
    _reserved_env,
)


class ModelSource(_Base):
    """Which model the runtime serves and how it loads it."""

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
        description=(
            "Where the weights come from: hf://org/name (a Hugging Face repository), "
            "file:///absolute/path (a path inside the runtime image or node), or "
            "pvc://claim/path (a path inside a PersistentVolumeClaim, mounted read-only), or "
            "emulated://PROFILE: an emulated accelerator, where no model runs and each batch "
            "is a timed wait from a service-time profile shipped with the runtime "
            "(minilm-l6-cpu, minilm-l6-datacenter-gpu, bert-large-l4), for testing the loop "
            "at scale without GPUs."
        ),
    )
    task: Task = Field(
        description=(
            "What the model does: embedding (vectors), classification (labels of a text), "
            "rerank (a cross-encoder with one output scoring (query, document) pairs), "
            "image-classification (labels of an image, with the model's image processor) or "
            "multimodal-embedding (texts and images as vectors in one space: a CLIP- or "
            "SigLIP-style model with a text and an image tower)."
        ),
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="A Hugging Face revision (branch, tag or commit) for hf:// models.",
    )
    dtype: Dtype = Field(
        default="auto",
        description=(
            "Weights precision: auto (float16 on a GPU, float32 on a CPU), float32, float16 "
            "or bfloat16."
        ),
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository to run its own Python code when loading.",
    )


_QUANTITY_RULE: JsonDict = {
    "x-kubernetes-validations": [
        _cel("isQuantity(self)", "must be a Kubernetes quantity, such as 500m, 2 or 4Gi")
    ]
}


class Resources(_Base):
    """What each replica asks the scheduler for."""

    gpus: int = Field(
        default=0,
        ge=0,
        le=MAX_GPUS_PER_REPLICA,
        description="GPUs per replica, requested as the gpuResourceName extended resource.",
    )
    cpu: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        json_schema_extra=_QUANTITY_RULE,
        description="CPU request per replica (a Kubernetes quantity such as 500m or 2); "
        "unset: the operator's default (BATCHPILOT_DEFAULT_CPU_REQUEST).",
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        json_schema_extra=_QUANTITY_RULE,
        description="Memory request and limit per replica (a quantity such as 4Gi); unset: "
        "the operator's default request and limit (BATCHPILOT_DEFAULT_MEMORY_REQUEST, "
        "BATCHPILOT_DEFAULT_MEMORY_LIMIT).",
    )


class Toleration(_Base):
    """A Kubernetes toleration, copied onto the runtime pods."""

    key: str | None = Field(
        default=None, max_length=317, description="The taint key to tolerate; empty means all."
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists (any value) or Equal (the given value)."
    )
    value: str | None = Field(
        default=None, max_length=63, description="The taint value, with operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to tolerate; empty means all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="How long a NoExecute taint is tolerated before eviction.",
    )


class KeyRef(_Base):
    """A key of a Secret or ConfigMap in the BatchedModel's namespace."""

    name: str = Field(min_length=1, max_length=253, description="The object's name.")
    key: str = Field(min_length=1, max_length=253, description="The key within the object.")
    optional: bool | None = Field(
        default=None, description="Start the pod even if the object or key is missing."
    )


class EnvSource(_Base):
    """Where an environment variable's value comes from."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                    "exactly one of secretKeyRef or configMapKeyRef must be set",
                )
            ]
        }
    )

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("exactly one of secretKeyRef or configMapKeyRef must be set")
        return self


class EnvVar(_Base):
    """An environment variable for the runtime container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!(has(self.value) && has(self.valueFrom))",
                    "value and valueFrom are mutually exclusive",
                ),
                _cel(
                    f"self.name in {_cel_list(RUNTIME_TUNING_ENV)} || "
                    f"!(self.name.startsWith('{pod.ENV_PREFIX}') || "
                    f"self.name in {_cel_list(RESERVED_ENV)})",
                    f"name {RESERVED_ENV_MESSAGE}",
                    ".name",
                ),
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=ENV_NAME_PATTERN,
        description="Variable name, not a reserved one (see env).",
    )
    value: str | None = Field(default=None, max_length=32768, description="A literal value.")
    value_from: EnvSource | None = Field(
        default=None, description="Take the value from a Secret or ConfigMap key instead."
    )

    @model_validator(mode="after")
    def _exclusive(self) -> Self:
        if self.value is not None and self.value_from is not None:
            raise ValueError("value and valueFrom are mutually exclusive")
        return self

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if _reserved_env(name):
            raise ValueError(f"{name} {RESERVED_ENV_MESSAGE}")
        return name


class Batching(_Base):
    """The runtime's batching config (written to the <name>-batching ConfigMap)."""

    # Defaults and bounds are the batching config's (batchpilot_contract.batching), so that
    # every spec the API server accepts renders a document the runtime accepts.
    max_batch_size: int = batching.MAX_BATCH_SIZE.field(
        description=(
            "Most items executed in one forward pass. With autoscaling enabled this is the "
            "starting point, kept within autoscaling.minBatchSize..maxBatchSize."
        ),
    )
    max_wait_ms: float = batching.MAX_WAIT_MS.field(
        description=(
            "Longest time in milliseconds a batch waits to fill once the model is free. With "
            "autoscaling enabled this is the starting point, kept within minWaitMs..maxWaitMs."
        ),
    )
    max_queue: int = batching.MAX_QUEUE.field(
        description="Most items waiting for a batch per replica; more are refused with 429.",
    )
    request_timeout_ms: float = batching.REQUEST_TIMEOUT_MS.field(
        description="An item still queued after this many milliseconds is answered 504.",
    )


class Autoscaling(_Base):
    """The closed loop: replicas, batch size and wait tuned against a p95 latency target."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.minReplicas <= self.maxReplicas",
                    "minReplicas must be less than or equal to maxReplicas",
                    ".minReplicas",
                ),
                _cel(
                    "self.minBatchSize <= self.maxBatchSize",
                    "minBatchSize must be less than or equal to maxBatchSize",
                    ".minBatchSize",
                ),
                _cel(
                    "self.minWaitMs <= self.maxWaitMs",
                    "minWaitMs must be less than or equal to maxWaitMs",
                    ".minWaitMs",
                ),
            ]
        }
    )

    enabled: bool = Field(
        default=False,
        description=(
            "Tune replicas, batch size and wait in a closed loop. When false, replicas and "
            "batching are used as written."
        ),
    )
    min_replicas: int = Field(
        default=1, ge=1, le=MAX_REPLICAS_LIMIT, description="Fewest replicas the loop keeps."
    )
    max_replicas: int = Field(
        default=4, ge=1, le=MAX_REPLICAS_LIMIT, description="Most replicas the loop may run."
    )
    latency_target_ms: float = Field(
        default=100.0,
        gt=0.0,
        le=MAX_LATENCY_TARGET_MS,
        description="The p95 request latency the loop holds, in milliseconds (the SLO).",
    )
    min_batch_size: int = batching.MAX_BATCH_SIZE.field(
        default=1, description="Smallest max batch size to use."
    )
    max_batch_size: int = batching.MAX_BATCH_SIZE.field(
        default=128, description="Largest max batch size to use."
    )
    min_wait_ms: float = batching.MAX_WAIT_MS.field(
        default=0.0, description="Shortest max batch wait to use, in milliseconds."
    )
    max_wait_ms: float = batching.MAX_WAIT_MS.field(
        default=50.0, description="Longest max batch wait to use, in milliseconds."
    )
    interval_seconds: int = Field(
        default=15, ge=1, le=3600, description="How often the loop observes and decides."
    )
    scale_down_delay_seconds: int = Field(
        default=120,
        ge=0,
        le=86_400,
        description=(
            "How long the load must stay low before replicas are removed. The loop doubles it"
            " (up to 4x) when the load comes back within it after a scale-down, and halves"
            " it back on a later scale-up. A load that fell steadily through it is followed"
            " after a quarter of it."
        ),
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be less than or equal to maxReplicas")
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("minBatchSize must be less than or equal to maxBatchSize")
        if self.min_wait_ms > self.max_wait_ms:
            raise ValueError("minWaitMs must be less than or equal to maxWaitMs")
        return self


class BatchedModelSpec(_Base):
    """The desired state of a BatchedModel."""

    model: ModelSource = Field(description="The model to serve.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="The runtime image; defaults to the operator's configured runtime image.",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Resources requested by each replica."
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=RESOURCE_NAME_PATTERN,
        description="The extended resource that counts GPUs on this cluster's nodes.",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None, description="Node labels the runtime pods must be scheduled on."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=64, description="Taints the runtime pods tolerate."
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=128,
        description=(
            "Extra environment variables for the runtime container. The names the operator "
            f"sets are reserved: every {pod.ENV_PREFIX} name except the runtime tuning knobs "
            f"{', '.join(RUNTIME_TUNING_ENV)}, and {', '.join(RESERVED_ENV)}."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS_LIMIT,
        description=(
            "Replica count. Used as is when autoscaling is disabled (kubectl scale and HPA "
            "write it through the scale subresource); the starting point otherwise."
        ),
    )
    batching: Batching = Field(
        default_factory=Batching, description="How requests are grouped into batches."
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="The latency-driven tuning loop."
    )
