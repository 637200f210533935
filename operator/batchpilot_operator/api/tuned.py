"""The tuned state: the knobs the children are rendered from, resolved from spec and status."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator.api.spec import (
    BatchedModelSpec,
)
from batchpilot_operator.api.status import (
    BatchedModelStatus,
    SpecBasis,
    TunedStatus,
)


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
