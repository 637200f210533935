"""The API's group, version and names, the limits and patterns its fields share, and the
base model every part of it derives from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from batchpilot_contract import pod
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
