"""Operator settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_RUNTIME_IMAGE = "batchpilot/runtime:0.1.0"


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """``BATCHPILOT_RUNTIME_IMAGE``, ``BATCHPILOT_IMAGE_PULL_POLICY``,
        ``BATCHPILOT_RESYNC_SECONDS``, ``BATCHPILOT_RETRY_MAX_SECONDS``."""
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
        return cls(
            runtime_image=env.get("BATCHPILOT_RUNTIME_IMAGE") or defaults.runtime_image,
            image_pull_policy=policy,
            resync_seconds=resync,
            retry_max_seconds=retry,
        )
