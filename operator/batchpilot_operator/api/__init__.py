"""The BatchedModel API (``batchpilot.dev/v1alpha1``): the single source of the CRD.

Every field is a pydantic field with a description, bounds and an alias in camelCase (the
Kubernetes convention). :mod:`batchpilot_operator.crdgen` turns these models into the CRD's
OpenAPI schema, and the rules that span several fields are written twice, once as a CEL rule
(``x-kubernetes-validations``, enforced by the API server) and once as a pydantic validator
(enforced when the operator parses an object), so both refuse the same specs.
"""

from __future__ import annotations

from batchpilot_operator.api.base import (
    API_VERSION as API_VERSION,
)
from batchpilot_operator.api.base import (
    CATEGORIES as CATEGORIES,
)
from batchpilot_operator.api.base import (
    EMULATED_SCHEME as EMULATED_SCHEME,
)
from batchpilot_operator.api.base import (
    ENV_NAME_PATTERN as ENV_NAME_PATTERN,
)
from batchpilot_operator.api.base import (
    GROUP as GROUP,
)
from batchpilot_operator.api.base import (
    KIND as KIND,
)
from batchpilot_operator.api.base import (
    MAX_GPUS_PER_REPLICA as MAX_GPUS_PER_REPLICA,
)
from batchpilot_operator.api.base import (
    MAX_LATENCY_TARGET_MS as MAX_LATENCY_TARGET_MS,
)
from batchpilot_operator.api.base import (
    MAX_REPLICAS_LIMIT as MAX_REPLICAS_LIMIT,
)
from batchpilot_operator.api.base import (
    MODEL_URI_PATTERN as MODEL_URI_PATTERN,
)
from batchpilot_operator.api.base import (
    PLURAL as PLURAL,
)
from batchpilot_operator.api.base import (
    QUANTITY_PATTERN as QUANTITY_PATTERN,
)
from batchpilot_operator.api.base import (
    RESERVED_ENV as RESERVED_ENV,
)
from batchpilot_operator.api.base import (
    RESERVED_ENV_MESSAGE as RESERVED_ENV_MESSAGE,
)
from batchpilot_operator.api.base import (
    RESOURCE_NAME_PATTERN as RESOURCE_NAME_PATTERN,
)
from batchpilot_operator.api.base import (
    RUNTIME_TUNING_ENV as RUNTIME_TUNING_ENV,
)
from batchpilot_operator.api.base import (
    SHORT_NAMES as SHORT_NAMES,
)
from batchpilot_operator.api.base import (
    SINGULAR as SINGULAR,
)
from batchpilot_operator.api.base import (
    VERSION as VERSION,
)
from batchpilot_operator.api.base import (
    ConditionStatus as ConditionStatus,
)
from batchpilot_operator.api.base import (
    Dtype as Dtype,
)
from batchpilot_operator.api.base import (
    LabelValue as LabelValue,
)
from batchpilot_operator.api.base import (
    Task as Task,
)
from batchpilot_operator.api.base import (
    _Base as _Base,
)
from batchpilot_operator.api.base import (
    _cel as _cel,
)
from batchpilot_operator.api.base import (
    _cel_list as _cel_list,
)
from batchpilot_operator.api.base import (
    _reserved_env as _reserved_env,
)
from batchpilot_operator.api.resource import (
    BatchedModel as BatchedModel,
)
from batchpilot_operator.api.resource import (
    ObjectMeta as ObjectMeta,
)
from batchpilot_operator.api.spec import (
    _QUANTITY_RULE as _QUANTITY_RULE,
)
from batchpilot_operator.api.spec import (
    Autoscaling as Autoscaling,
)
from batchpilot_operator.api.spec import (
    BatchedModelSpec as BatchedModelSpec,
)
from batchpilot_operator.api.spec import (
    Batching as Batching,
)
from batchpilot_operator.api.spec import (
    EnvSource as EnvSource,
)
from batchpilot_operator.api.spec import (
    EnvVar as EnvVar,
)
from batchpilot_operator.api.spec import (
    KeyRef as KeyRef,
)
from batchpilot_operator.api.spec import (
    ModelSource as ModelSource,
)
from batchpilot_operator.api.spec import (
    Resources as Resources,
)
from batchpilot_operator.api.spec import (
    Toleration as Toleration,
)
from batchpilot_operator.api.status import (
    _TIME as _TIME,
)
from batchpilot_operator.api.status import (
    MAX_RECOMMENDATIONS as MAX_RECOMMENDATIONS,
)
from batchpilot_operator.api.status import (
    BatchedModelStatus as BatchedModelStatus,
)
from batchpilot_operator.api.status import (
    Condition as Condition,
)
from batchpilot_operator.api.status import (
    LastDecision as LastDecision,
)
from batchpilot_operator.api.status import (
    LoopStatus as LoopStatus,
)
from batchpilot_operator.api.status import (
    Recommendation as Recommendation,
)
from batchpilot_operator.api.status import (
    SpecBasis as SpecBasis,
)
from batchpilot_operator.api.status import (
    TunedStatus as TunedStatus,
)
from batchpilot_operator.api.tuned import (
    TunedState as TunedState,
)
from batchpilot_operator.api.tuned import (
    _basis as _basis,
)
from batchpilot_operator.api.tuned import (
    _content as _content,
)
from batchpilot_operator.api.tuned import (
    _with_generation as _with_generation,
)
from batchpilot_operator.api.tuned import (
    resolve_state as resolve_state,
)
from batchpilot_operator.api.tuned import (
    settle_generation as settle_generation,
)
