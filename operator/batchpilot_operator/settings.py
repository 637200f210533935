"""Operator settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal

from kubernetes.utils.quantity import parse_quantity as _parse_quantity

from batchpilot_contract.pod import ENV_PREFIX

DEFAULT_RUNTIME_IMAGE = "batchpilot/runtime:0.1.0"

_QUANTITIES = (
    "default_cpu_request",
    "default_memory_request",
    "default_memory_limit",
    "tmp_size_limit",
    "cache_size_limit",
)
"""Settings that hold a Kubernetes quantity ('' for none)."""


def parse_quantity(quantity: str) -> Decimal:
    """A Kubernetes quantity (``2Gi``, ``500m``) as a number; ValueError if it is none."""
    value: Decimal = _parse_quantity(quantity)  # type: ignore[no-untyped-call]
    return value


@dataclass(frozen=True)
class OperatorSettings:
    """What the builders and handlers need beyond the BatchedModel itself."""

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    """Image used when a BatchedModel does not set ``spec.image``."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of the runtime container."""
    resync_seconds: float = 60.0
    """Period of the level-triggered resync of every BatchedModel."""
    retry_max_seconds: float = 60.0
    """Longest backoff between retries after an API error."""
    default_cpu_request: str = "1"
    """CPU request of the runtime container when ``spec.resources.cpu`` is unset ('' for
    none). No CPU limit: throttling a model server costs latency."""
    default_memory_request: str = "2Gi"
    """Memory request of the runtime container when ``spec.resources.memory`` is unset ('' for
    none)."""
    default_memory_limit: str = "8Gi"
    """Memory limit of the runtime container when ``spec.resources.memory`` is unset ('' for
    none); a model that needs more sets ``spec.resources.memory`` (request and limit)."""
    tmp_size_limit: str = "1Gi"
    """``sizeLimit`` of the runtime pod's ``/tmp`` emptyDir ('' for none)."""
    cache_size_limit: str = "2Gi"
    """``sizeLimit`` of the runtime pod's cache emptyDir (libraries' files, remote code; ''
    for none)."""

    def __post_init__(self) -> None:
        for name in _QUANTITIES:
            value = getattr(self, name)
            try:
                if value:
                    parse_quantity(value)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}: not a quantity: {value!r}") from exc
        request, limit = self.default_memory_request, self.default_memory_limit
        if request and limit and parse_quantity(request) > parse_quantity(limit):
            raise ValueError(
                "BATCHPILOT_DEFAULT_MEMORY_REQUEST must not exceed BATCHPILOT_DEFAULT_MEMORY_LIMIT"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """``BATCHPILOT_`` and the field's name in upper case, for each field: for example
        ``BATCHPILOT_RUNTIME_IMAGE`` or ``BATCHPILOT_DEFAULT_MEMORY_LIMIT``."""
        env = os.environ if env is None else env
        defaults = cls()
        resync = float(env.get("BATCHPILOT_RESYNC_SECONDS", defaults.resync_seconds))
        retry = float(env.get("BATCHPILOT_RETRY_MAX_SECONDS", defaults.retry_max_seconds))
        if resync <= 0 or retry <= 0:
            raise ValueError(
                "BATCHPILOT_RESYNC_SECONDS and BATCHPILOT_RETRY_MAX_SECONDS must be > 0"
            )
        policy = env.get("BATCHPILOT_IMAGE_PULL_POLICY", defaults.image_pull_policy)
        if policy not in ("Always", "IfNotPresent", "Never"):
            raise ValueError(f"BATCHPILOT_IMAGE_PULL_POLICY: unknown policy {policy!r}")
        # Quantities: an empty value is meaningful (no default, no limit), so only an unset
        # variable takes the default.
        quantities = {
            f.name: env.get(f"{ENV_PREFIX}{f.name.upper()}", getattr(defaults, f.name)).strip()
            for f in fields(cls)
            if f.name in _QUANTITIES
        }
        return cls(
            runtime_image=env.get("BATCHPILOT_RUNTIME_IMAGE") or defaults.runtime_image,
            image_pull_policy=policy,
            resync_seconds=resync,
            retry_max_seconds=retry,
            **quantities,
        )
