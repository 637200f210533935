"""The batching configuration: the ConfigMap contract between the operator and the runtime.

The operator writes one ConfigMap per BatchedModel, ``<name>-batching``, whose key
``batching.json`` holds a :class:`BatchingConfig` as JSON; the runtime reads it from
``/etc/batchpilot/batching.json`` and applies a new version for the next batch, without a
restart. This module is the single definition of that schema and must stay torch-free: the
operator imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIGMAP_KEY = "batching.json"
"""The key of the batching ConfigMap that holds the JSON document."""

DEFAULT_CONFIG_PATH = Path("/etc/batchpilot") / CONFIGMAP_KEY
"""Where the runtime expects the ConfigMap to be mounted."""

MAX_BATCH_SIZE_LIMIT = 4096
MAX_WAIT_MS_LIMIT = 10_000.0
MAX_QUEUE_LIMIT = 1_000_000
REQUEST_TIMEOUT_MS_LIMIT = 3_600_000.0


class ConfigError(ValueError):
    """A batching config that cannot be used; the message names the problem."""


class BatchingConfig(BaseModel):
    """How the runtime groups requests into batches. Field names are the JSON keys.

    The fields are strict, so that ``true`` or ``"8"`` never pass for a number; a
    millisecond field still takes an integer.
    """

    model_config = ConfigDict(
        populate_by_name=True, extra="forbid", frozen=True, validate_by_alias=True, strict=True
    )

    max_batch_size: int = Field(
        default=32,
        ge=1,
        le=MAX_BATCH_SIZE_LIMIT,
        alias="maxBatchSize",
        description="Most items executed in one forward pass.",
    )
    max_wait_ms: float = Field(
        default=5.0,
        ge=0.0,
        le=MAX_WAIT_MS_LIMIT,
        alias="maxWaitMs",
        description="Longest time a batch may wait to fill once the model is free.",
    )
    max_queue: int = Field(
        default=1024,
        ge=1,
        le=MAX_QUEUE_LIMIT,
        alias="maxQueue",
        description="Most items waiting for a batch; more are refused with 429.",
    )
    request_timeout_ms: float = Field(
        default=30_000.0,
        gt=0.0,
        le=REQUEST_TIMEOUT_MS_LIMIT,
        alias="requestTimeoutMs",
        description="An item still queued after this long is answered 504.",
    )
    generation: int = Field(
        default=0,
        ge=0,
        description="Version stamp set by the operator; exported as a metric.",
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

    @classmethod
    def from_file(cls, path: Path) -> BatchingConfig:
        """Read and parse a config file; raise :class:`ConfigError` if unreadable or invalid."""
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            return cls.from_json(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def _describe(exc: ValidationError) -> str:
    """One line per error, each naming the field: ``maxBatchSize: Input should be ...``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "document"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
