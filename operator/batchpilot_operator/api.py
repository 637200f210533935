"""The BatchedModel API (``batchpilot.dev/v1alpha1``): the single source of the CRD.

Every field is a pydantic field with a description, bounds and an alias in camelCase (the
Kubernetes convention). :mod:`batchpilot_operator.crdgen` turns these models into the CRD's
OpenAPI schema, and the rules that span several fields are written twice, once as a CEL rule
(``x-kubernetes-validations``, enforced by the API server) and once as a pydantic validator
(enforced when the operator parses an object), so both refuse the same specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from batchpilot_contract import batching, pod
from batchpilot_contract.batching import BatchingConfig
from batchpilot_contract.labels import DOMAIN

GROUP = DOMAIN
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BatchedModel"
PLURAL = "batchedmodels"
SINGULAR = "batchedmodel"
SHORT_NAMES = ("bm",)
CATEGORIES = ("batchpilot",)

MAX_REPLICAS_LIMIT = 1000
MAX_GPUS_PER_REPLICA = 16
MAX_LATENCY_TARGET_MS = 600_000.0

# The runtime's tasks (batchpilot_runtime.backends.TASKS); generation joins when it serves it.
Task = Literal[
    "embedding", "classification", "rerank", "image-classification", "multimodal-embedding"
]
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
ConditionStatus = Literal["True", "False", "Unknown"]

# A pvc:// path segment is anything but "..", which would lead out of the claim; spelt out
# without a lookahead, which neither the API server's regex engine nor pydantic's has.
MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
    r"|file:///[^\s]*"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/(\.?[^\s/.][^\s/]*|\.\.[^\s/]+|\.)?)*"
    r"|emulated://[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"
)
"""``hf://org/name`` (or ``hf://name``), ``file:///absolute/path``, ``pvc://claim[/path]``,
``emulated://PROFILE`` (an emulated accelerator)."""

EMULATED_SCHEME = "emulated://"

QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
"""The Kubernetes resource quantity syntax (as in the core API's OpenAPI schema)."""

RESOURCE_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"  # noqa: E501
"""An extended resource name such as ``nvidia.com/gpu``."""

ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

RUNTIME_TUNING_ENV = pod.TUNING_ENV
"""The runtime settings ``spec.env`` may set: tuning knobs that no spec field controls.

Every other ``BATCHPILOT_`` name is reserved: the operator sets it from the spec (or passes it
as a flag), and a copy in ``spec.env`` would get round a policy that checks the spec's field,
such as ``trustRemoteCode``."""

RESERVED_ENV = (pod.HF_MODULES_CACHE_ENV,)
"""Reserved names outside the ``BATCHPILOT_`` prefix that the operator sets."""

RESERVED_ENV_MESSAGE = (
    "is reserved for the operator, which sets the runtime's settings from the spec: "
    f"{', '.join(RESERVED_ENV)} and every {pod.ENV_PREFIX} name except the tuning knobs "
    f"{', '.join(RUNTIME_TUNING_ENV)}"
)


def _reserved_env(name: str) -> bool:
    return name not in RUNTIME_TUNING_ENV and (
        name.startswith(pod.ENV_PREFIX) or name in RESERVED_ENV
    )


def _cel_list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


LabelValue = Annotated[
    str,
    Field(
        max_length=63,
        pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
        description="A label value.",
    ),
]


def _cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One ``x-kubernetes-validations`` entry."""
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class _Base(BaseModel):
    """camelCase aliases, population by either name, unknown keys ignored when parsing."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )


# --------------------------------------------------------------------------------------- spec


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
        description="CPU request per replica (a Kubernetes quantity such as 500m or 2).",
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        json_schema_extra=_QUANTITY_RULE,
        description="Memory request and limit per replica (a quantity such as 4Gi).",
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


# ------------------------------------------------------------------------------------- status


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


# --------------------------------------------------------------------------------- the object


class ObjectMeta(_Base):
    """The parts of metadata the operator reads."""

    name: str = Field(description="Object name.")
    namespace: str = Field(default="default", description="Object namespace.")
    uid: str | None = Field(default=None, description="Object UID.")
    generation: int | None = Field(default=None, description="Spec generation.")
    resource_version: str | None = Field(
        default=None, description="The version a write may be conditional on."
    )
    labels: dict[str, str] | None = Field(default=None, description="Labels.")


class BatchedModel(_Base):
    """A parsed BatchedModel object (what the builders take)."""

    api_version: str = Field(default=API_VERSION, description="apiVersion.")
    kind: str = Field(default=KIND, description="kind.")
    metadata: ObjectMeta = Field(description="Object metadata.")
    spec: BatchedModelSpec = Field(description="The desired state.")
    status: BatchedModelStatus = Field(
        default_factory=BatchedModelStatus, description="The observed state."
    )

    @classmethod
    def from_body(cls, body: Any) -> BatchedModel:
        """Parse a Kubernetes object (a dict or kopf body); status may be absent."""
        data = {
            "apiVersion": body.get("apiVersion", API_VERSION),
            "kind": body.get("kind", KIND),
            "metadata": dict(body.get("metadata") or {}),
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            if not any(err["loc"][:1] == ("status",) for err in exc.errors()):
                raise
        # A status written by someone else that does not parse must not block reconciling:
        # the operator rewrites the fields it owns.
        data["status"] = {}
        return cls.model_validate(data)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


# ---------------------------------------------------------------------------- the tuned state


@dataclass(frozen=True)
class TunedState:
    """What the children are rendered from: the knobs the tuning loop turns.

    Initialised from the spec, persisted in ``status.tuned``, and passed to every builder in
    :mod:`batchpilot_operator.desired`. With autoscaling disabled it always equals the spec;
    with autoscaling enabled the loop owns it, within the spec's bounds, and an edit of
    ``spec.replicas`` or ``spec.batching`` restarts it from the new value (``basis`` records
    the spec values it started from). To change it, derive a new one with
    ``dataclasses.replace(state, replicas=..., max_batch_size=..., max_wait_ms=...)``; the
    reconciler settles ``config_generation`` against the ConfigMap.
    """

    replicas: int
    max_batch_size: int
    max_wait_ms: float
    config_generation: int = 0
    basis: tuple[int, int, float] | None = field(default=None, compare=False)
    """(spec.replicas, spec.batching.maxBatchSize, spec.batching.maxWaitMs) at the start."""

    @classmethod
    def from_spec(cls, spec: BatchedModelSpec, config_generation: int = 0) -> TunedState:
        basis = _basis(spec)
        state = cls(*basis, config_generation=config_generation, basis=basis)
        return state.clamped(spec) if spec.autoscaling.enabled else state

    @classmethod
    def from_status(cls, status: BatchedModelStatus) -> TunedState | None:
        if status.tuned is None:
            return None
        t = status.tuned
        basis = None
        if t.from_spec is not None:
            b = t.from_spec
            basis = (b.replicas, b.max_batch_size, b.max_wait_ms)
        return cls(t.replicas, t.max_batch_size, t.max_wait_ms, t.config_generation, basis)

    def to_status(self) -> dict[str, Any]:
        from_spec = None
        if self.basis is not None:
            from_spec = SpecBasis(
                replicas=self.basis[0], max_batch_size=self.basis[1], max_wait_ms=self.basis[2]
            )
        return TunedStatus(
            replicas=self.replicas,
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            config_generation=self.config_generation,
            from_spec=from_spec,
        ).model_dump(by_alias=True, exclude_none=True)

    def clamped(self, spec: BatchedModelSpec) -> TunedState:
        """Within the autoscaling bounds of ``spec``."""
        a = spec.autoscaling
        return replace(
            self,
            replicas=min(max(self.replicas, a.min_replicas), a.max_replicas),
            max_batch_size=min(max(self.max_batch_size, a.min_batch_size), a.max_batch_size),
            max_wait_ms=min(max(self.max_wait_ms, a.min_wait_ms), a.max_wait_ms),
        )

    def batching_config(self, spec: BatchedModelSpec) -> BatchingConfig:
        """The runtime config this state renders (the ConfigMap's document)."""
        return BatchingConfig(
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            max_queue=spec.batching.max_queue,
            request_timeout_ms=spec.batching.request_timeout_ms,
            generation=self.config_generation,
        )


def _basis(spec: BatchedModelSpec) -> tuple[int, int, float]:
    return (spec.replicas, spec.batching.max_batch_size, spec.batching.max_wait_ms)


def resolve_state(spec: BatchedModelSpec, previous: TunedState | None) -> TunedState:
    """The tuned state to render now, from the spec and the state persisted in status.

    Autoscaling disabled: the spec's values. Enabled: the previous state, except where the
    user edited the spec value it started from, kept within the (possibly edited) bounds; or
    the spec's values, clamped, the first time. The previous config generation is kept; it is
    settled against the ConfigMap by :func:`settle_generation`.
    """
    generation = previous.config_generation if previous else 0
    if previous is None or not spec.autoscaling.enabled:
        return TunedState.from_spec(spec, generation)
    now = _basis(spec)
    then = previous.basis or now
    replicas, batch, wait = (
        new if new != old else kept
        for new, old, kept in zip(
            now,
            then,
            (previous.replicas, previous.max_batch_size, previous.max_wait_ms),
            strict=True,
        )
    )
    state = TunedState(int(replicas), int(batch), float(wait), generation, basis=now)
    return state.clamped(spec)


def settle_generation(
    state: TunedState, spec: BatchedModelSpec, current: BatchingConfig | None
) -> TunedState:
    """Give ``state`` the config generation its ConfigMap document should carry.

    Unchanged content keeps the generation already written; any content change (or a missing
    ConfigMap) takes a generation above both the written one and the state's, so the number
    the pods export only ever grows.
    """
    desired = state.batching_config(spec)
    if current is not None and _content(current) == _content(desired):
        return _with_generation(state, current.generation)
    floor = max(state.config_generation, current.generation if current else 0)
    return _with_generation(state, floor + 1)


def _content(config: BatchingConfig) -> dict[str, Any]:
    return config.model_dump(exclude={"generation"})


def _with_generation(state: TunedState, generation: int) -> TunedState:
    return replace(state, config_generation=generation)
