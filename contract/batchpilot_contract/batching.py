"""The batching config: the document the operator writes and every runtime pod reads.

The operator writes one ConfigMap per BatchedModel, ``<name>-batching``, whose key
``batching.json`` holds a :class:`BatchingConfig` as JSON; the runtime reads it from the
mounted ConfigMap (:data:`batchpilot_contract.pod.CONFIG_PATH`) and applies a new version for
the next batch, without a restart. Each field's default and bounds are a :class:`Knob`, which
the operator's API reuses for its own batching fields, so that a spec the API server accepts
always renders a document the runtime accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIGMAP_KEY: Final = "batching.json"
"""The key of the batching ConfigMap that holds the JSON document."""

CONFIGMAP_SUFFIX: Final = "-batching"
"""The batching ConfigMap of BatchedModel ``name`` is ``name + CONFIGMAP_SUFFIX``."""


def configmap_name(name: str) -> str:
    """The batching ConfigMap of BatchedModel ``name``."""
    return f"{name}{CONFIGMAP_SUFFIX}"


_UNSET: Any = object()
"""Marks an argument of :meth:`Knob.field` left out (``None`` is a default of its own)."""


@dataclass(frozen=True)
class Knob:
    """One field of the batching config: its default and bounds, declared once.

    ``minimum`` is inclusive unless ``exclusive_minimum``; ``maximum`` is inclusive. The
    types of the numbers are the field's (an ``int`` field has ``int`` bounds), so that the
    JSON schemas built from them keep integers integral.
    """

    default: int | float
    minimum: int | float
    maximum: int | float
    description: str
    exclusive_minimum: bool = False

    def __post_init__(self) -> None:
        low_ok = self.minimum < self.default if self.exclusive_minimum else True
        if not (low_ok and self.minimum <= self.default <= self.maximum):
            raise ValueError(f"default {self.default} outside {self.minimum}..{self.maximum}")

    def bounds(self) -> dict[str, int | float]:
        """The pydantic ``Field`` bounds: ``ge`` (or ``gt``) and ``le``."""
        low = "gt" if self.exclusive_minimum else "ge"
        return {low: self.minimum, "le": self.maximum}

    def field(self, *, default: Any = _UNSET, description: str | None = None, **extra: Any) -> Any:
        """A pydantic ``Field`` with these bounds; the default and description are this
        knob's unless given (a bound of another field, such as an autoscaling range, takes
        its own default)."""
        kwargs: dict[str, Any] = {
            "default": self.default if default is _UNSET else default,
            "description": self.description if description is None else description,
            **self.bounds(),
            **extra,
        }
        return Field(**kwargs)

    def contains(self, value: float) -> bool:
        """Whether ``value`` is within the bounds."""
        above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        return above and value <= self.maximum


MAX_BATCH_SIZE: Final = Knob(
    default=32, minimum=1, maximum=4096, description="Most items executed in one forward pass."
)
MAX_WAIT_MS: Final = Knob(
    default=5.0,
    minimum=0.0,
    maximum=10_000.0,
    description="Longest time a batch may wait to fill once the model is free.",
)
MAX_QUEUE: Final = Knob(
    default=1024,
    minimum=1,
    maximum=1_000_000,
    description="Most items waiting for a batch; more are refused with 429.",
)
REQUEST_TIMEOUT_MS: Final = Knob(
    default=30_000.0,
    minimum=0.0,
    maximum=3_600_000.0,
    exclusive_minimum=True,
    description="An item still queued after this long is answered 504.",
)


class ConfigError(ValueError):
    """A batching config that cannot be used; the message names the problem."""


class BatchingConfig(BaseModel):
    """How the runtime groups requests into batches. Aliases are the JSON keys.

    The fields are strict, so that ``true`` or ``"8"`` never pass for a number; a
    millisecond field still takes an integer.
    """

    model_config = ConfigDict(
        populate_by_name=True, extra="forbid", frozen=True, validate_by_alias=True, strict=True
    )

    max_batch_size: int = MAX_BATCH_SIZE.field(alias="maxBatchSize")
    max_wait_ms: float = MAX_WAIT_MS.field(alias="maxWaitMs")
    max_queue: int = MAX_QUEUE.field(alias="maxQueue")
    request_timeout_ms: float = REQUEST_TIMEOUT_MS.field(alias="requestTimeoutMs")
    generation: int = Field(
        default=0, ge=0, description="Version stamp set by the operator; exported as a metric."
    )

    @property
    def max_wait_s(self) -> float:
        """``max_wait_ms`` in seconds."""
        return self.max_wait_ms / 1000.0

    @property
    def request_timeout_s(self) -> float:
        """``request_timeout_ms`` in seconds."""
        return self.request_timeout_ms / 1000.0

    def to_json(self) -> str:
        """The ConfigMap document: camelCase keys, stable order."""
        return json.dumps(self.model_dump(by_alias=True), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchingConfig:
        """Parse a ConfigMap document; raise :class:`ConfigError` naming the bad field."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """One line per error, each naming the field: ``maxBatchSize: Input should be ...``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "document"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
