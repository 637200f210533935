"""The BatchedModel object itself: metadata, spec and status."""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    ValidationError,
)

from batchpilot_operator.api.base import (
    API_VERSION,
    KIND,
    _Base,
)
from batchpilot_operator.api.spec import (
    BatchedModelSpec,
)
from batchpilot_operator.api.status import (
    BatchedModelStatus,
)


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
