"""Actuation: the tuning loop of one BatchedModel, one tick at a time.

Each tick (every ``spec.autoscaling.intervalSeconds``; a kopf daemon in
:mod:`batchpilot_operator.handlers` drives it):

1. read the BatchedModel, list its runtime pods, scrape the ready ones' ``/metrics``;
2. compare with the previous scrape into an :class:`~batchpilot_operator.metrics.Observation`;
3. :func:`~batchpilot_operator.policy.decide` the next replicas, batch size and wait;
4. apply it through the reconciler (``converge(adjust=...)``, under its per-object lock):
   replicas on the Deployment, the config in the ConfigMap, the observation, the config the
   pods report in force and the decision in status;
5. after a config change, touch an annotation on every pod, starting ones too: the kubelet
   refreshes a mounted ConfigMap only on its next sync of the pod, and a pod update starts
   one at once. The loop then watches the pods' metrics until they all report the new
   generation, and records how long that took (an Event, and :attr:`TickResult.propagation_s`).

The memory between ticks (the previous scrape, recent service-time points, the policy's
timings) lives in :class:`TuningLoop`. What the policy learnt (its headroom and scale-down
delay) is also written to ``status.loop``, and a new operator process resumes from it; the
rest is lost on a restart, so the first tick after one only takes a baseline and holds.

Kubernetes access goes through the small :class:`Kube` port (synchronous, run in a thread),
so the loop is tested with fakes and runs against the real API server in the operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from batchpilot_contract import pod as contract_pod
from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator import api
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.conditions import now_rfc3339
from batchpilot_operator.metrics import (
    Observation,
    Scrape,
    ServiceHistory,
    observe,
    scrape_pods,
)
from batchpilot_operator.policy import CurrentState, Decision, TuningSpec, decide

LOGGER = logging.getLogger("batchpilot.loop")

HISTORY_PER_BAND = 8
"""Per-pod service-time points kept for the fit in each batch-size band."""
TEMPLATE_LABEL = "pod-template-hash"
"""The label the Deployment controller gives each pod: one value per pod template."""
PROPAGATION_POLL_S = 0.25
"""How often the pods' metrics are read while a new config propagates."""
PROPAGATION_TIMEOUT_S = 10.0
"""Longest the loop watches a new config propagate within one tick (the next ticks see it)."""

Scraper = Callable[[Mapping[str, str]], Awaitable[Scrape]]
Adjust = Callable[[BatchedModel, TunedState], TunedState]
"""The reconciler's tuning hook: the state to apply, from the object and the current state."""
Policy = Callable[[Observation, CurrentState, TuningSpec, float], Decision]


class Kube(Protocol):
    """What the loop needs from the cluster. Synchronous: the loop runs it in a thread."""

    def read(self, namespace: str, name: str) -> BatchedModel | None:
        """The BatchedModel, or None once it is gone."""
        ...

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The BatchedModel's runtime pods, as the API returns them."""
        ...

    def apply(
        self,
        namespace: str,
        name: str,
        *,
        adjust: Adjust,
        extra_status: Mapping[str, Any],
        in_force: BatchingConfig | None,
    ) -> TunedState | None:
        """Converge the children and status with ``adjust``; the state applied (None: gone)."""
        ...

    def touch_pods(self, namespace: str, pods: list[str], generation: int) -> None:
        """Annotate the pods with the config generation (a pod already gone is fine)."""
        ...


@dataclass(frozen=True)
class LoopEvent:
    """An Event to post on the BatchedModel."""

    type: str
    reason: str
    message: str


@dataclass
class TickResult:
    """What one tick saw and did."""

    observation: Observation | None
    decision: Decision | None
    interval_s: float
    events: list[LoopEvent] = field(default_factory=list)
    propagation_s: float | None = None
    """Seconds from writing a new config to every ready pod reporting it (None: no change,
    or not every pod within :data:`PROPAGATION_TIMEOUT_S`; the next ticks then wait for it)."""


# ------------------------------------------------------------------------ pure helpers


def ready_pod_targets(pods: list[dict[str, Any]], port: int = contract_pod.PORT) -> dict[str, str]:
    """Pod name -> metrics URL of the pods that are Ready, have an IP and are not being
    deleted: the pods that serve traffic, so the ones whose load counts."""
    targets: dict[str, str] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        ip = status.get("podIP")
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if ready and ip and not meta.get("deletionTimestamp"):
            host = f"[{ip}]" if ":" in ip else ip
            targets[meta["name"]] = f"http://{host}:{port}{contract_pod.METRICS_PATH}"
    return targets


def _live_metadata(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metadata of the pods not being deleted."""
    metas = [pod.get("metadata") or {} for pod in pods]
    return [m for m in metas if not m.get("deletionTimestamp")]


def live_pod_names(pods: list[dict[str, Any]]) -> list[str]:
    """Names of the pods not being deleted, ready or still starting: the ones a new config
    must reach. A pod created before the ConfigMap write mounted the old config, and the
    kubelet would refresh it only on its periodic sync, after it became ready."""
    return sorted(m["name"] for m in _live_metadata(pods) if m.get("name"))


def pod_templates(pods: list[dict[str, Any]]) -> frozenset[str]:
    """The pod templates (``pod-template-hash``) of the pods not being deleted."""
    labels = [m.get("labels") or {} for m in _live_metadata(pods)]
    return frozenset(label[TEMPLATE_LABEL] for label in labels if TEMPLATE_LABEL in label)


def in_force_config(obs: Observation, spec: api.BatchedModelSpec) -> BatchingConfig | None:
    """The batching config the pods report running: the oldest generation among them, so
    status never shows a config as in force before every pod runs it. None if none report."""
    reported = [
        (c.generation, c.max_batch_size, c.max_wait_s)
        for c in obs.configs.values()
        if c.generation is not None and c.max_batch_size is not None and c.max_wait_s is not None
    ]
    if not reported:
        return None
    generation, size, wait_s = min(reported)
    return BatchingConfig(
        max_batch_size=size,
        max_wait_ms=round(wait_s * 1000.0, 3),
        max_queue=spec.batching.max_queue,
        request_timeout_ms=spec.batching.request_timeout_ms,
        generation=generation,
    )


def observation_status(obs: Observation | None) -> dict[str, Any]:
    """The status fields that show the last window (empty when it covered no pod).
    Rounded, so that status changes only with the load, not with noise in the last digit."""
    if obs is None or obs.pods_paired == 0:
        return {}
    coverage = obs.pods_paired / max(1, obs.pods_expected)
    out: dict[str, Any] = {
        "requestsPerSecond": round(obs.arrival_rate / coverage, 1),
        "queueDepth": round(obs.queue_depth, 1),
    }
    if obs.mean_batch_size is not None:
        out["avgBatchSize"] = round(obs.mean_batch_size, 1)
    if obs.latency_p95_s is not None:
        out["p95LatencyMs"] = round(obs.latency_p95_s * 1000.0, 1)
    return out


def loop_memory_status(d: Decision) -> dict[str, Any] | None:
    """``status.loop``: what the loop learnt, for a new operator process to resume from."""
    util, delay = d.utilization_target, d.scale_down_delay_s
    memory = api.LoopMemory(
        utilization_target=None if util is None else round(util, 4),
        scale_down_delay_seconds=None if delay is None else round(delay, 1),
    ).model_dump(by_alias=True, exclude_none=True)
    return memory or None


def decision_event(before: CurrentState, d: Decision) -> LoopEvent | None:
    """The Event recording a decision that changes something (None for a hold)."""
    if not (d.replicas_changed or d.config_changed):
        return None
    changes = []
    if d.replicas_changed:
        changes.append(f"replicas {before.replicas}->{d.replicas}")
    if d.max_batch_size != before.max_batch_size:
        changes.append(f"maxBatchSize {before.max_batch_size}->{d.max_batch_size}")
    if d.max_wait_ms != before.max_wait_ms:
        changes.append(f"maxWaitMs {before.max_wait_ms:g}->{d.max_wait_ms:g}")
    reason = "ScaledUp" if d.replicas > before.replicas else "ScaledDown"
    if not d.replicas_changed:
        reason = "Retuned"
    return LoopEvent("Normal", reason, f"{', '.join(changes)}: {d.reason}")


def _knobs(state: TunedState) -> tuple[int, int, float]:
    return (state.replicas, state.max_batch_size, state.max_wait_ms)


# ------------------------------------------------------------------------------ the loop


class TuningLoop:
    """The loop of one BatchedModel: call :meth:`tick` once per interval."""

    def __init__(
        self,
        namespace: str,
        name: str,
        kube: Kube,
        *,
        scrape: Scraper | None = None,
        policy: Policy = decide,
        clock: Callable[[], float] = time.monotonic,
        propagation_timeout_s: float = PROPAGATION_TIMEOUT_S,
        logger: logging.Logger | logging.LoggerAdapter[Any] = LOGGER,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.kube = kube
        self.scrape: Scraper = scrape or (lambda targets: scrape_pods(targets, clock=clock))
        self.policy = policy
        self.clock = clock
        self.propagation_timeout_s = propagation_timeout_s
        self.logger = logger
        self.previous: Scrape | None = None
        self.history = ServiceHistory(per_band=HISTORY_PER_BAND)
        self.history_template: str | None = None
        """The pod template the service-time history was measured on."""
        self.state: CurrentState | None = None
        self.pending: tuple[int, float] | None = None
        """(generation, time written) of a config not yet reported by every pod."""

    def current(self, tuned: TunedState, memory: api.LoopMemory | None = None) -> CurrentState:
        """The policy's state: the knobs as the reconciler last applied them, with the loop's
        own memory of timings and recent recommendations; that memory is dropped when the
        knobs were moved outside the loop (a spec edit, ``kubectl scale``). A loop that has
        not decided yet (a new operator process) resumes the headroom and scale-down delay
        from ``memory``, the status an earlier one wrote."""
        knobs = _knobs(tuned)
        if self.state is None and memory is not None:  # only before the first decision
            self.state = CurrentState(
                *knobs,
                generation=tuned.config_generation,
                utilization_target=memory.utilization_target,
                scale_down_delay_s=memory.scale_down_delay_seconds,
            )
        if self.state is not None and knobs != (
            self.state.replicas,
            self.state.max_batch_size,
            self.state.max_wait_ms,
        ):
            # Edited outside the loop (spec, kubectl scale, new bounds): the tuning restarts
            # from there, and the scale-down delay counts from now, not from old history.
            self.logger.info(
                f"{self.namespace}/{self.name}: knobs set to {knobs} outside the loop; "
                "tuning restarts from them"
            )
            self.state = None
        base = self.state or CurrentState(*knobs, generation=tuned.config_generation)
        return replace(
            base,
            replicas=tuned.replicas,
            max_batch_size=tuned.max_batch_size,
            max_wait_ms=tuned.max_wait_ms,
            generation=tuned.config_generation,
        )

    def _follow_template(self, templates: frozenset[str]) -> None:
        """Forget the service times measured on another pod template once a rollout to a
        new one has finished: ``t(b)`` belongs to the image, the model and the resources,
        and bands the new pods would not revisit for hours would keep the old speed. During
        the rollout both templates serve, and their points are kept."""
        if len(templates) != 1:
            return
        (template,) = templates
        if self.history_template not in (None, template):
            self.logger.info(
                f"{self.namespace}/{self.name}: pods now run template {template}; "
                "the service-time history restarts"
            )
            self.history = ServiceHistory(per_band=HISTORY_PER_BAND)
        self.history_template = template

    async def tick(self) -> TickResult | None:
        """Observe, decide and apply once. None when the BatchedModel is gone."""
        bm = await asyncio.to_thread(self.kube.read, self.namespace, self.name)
        if bm is None:
            return None
        spec = TuningSpec.from_autoscaling(bm.spec.autoscaling)
        pods = await asyncio.to_thread(self.kube.list_pods, self.namespace, self.name)
        targets = ready_pod_targets(pods)
        self._follow_template(pod_templates(pods))
        scrape = await self.scrape(targets)
        obs = observe(self.previous, scrape, history=self.history.points())
        self.previous = scrape
        self.history.extend(obs.service_points)
        result = TickResult(obs, None, spec.interval_s)
        for pod, why in sorted(obs.missing.items()):
            self.logger.info(f"{self.namespace}/{self.name}: no metrics from {pod}: {why}")

        tuned = api.resolve_state(bm.spec, TunedState.from_status(bm.status))
        before = self.current(tuned, bm.status.loop)
        now = self.clock()
        decision = self.policy(obs, before, spec, now)
        result.decision = decision

        def adjust(fresh: BatchedModel, state: TunedState) -> TunedState:
            if _knobs(state) != _knobs(tuned):
                return state  # the spec was edited meanwhile: the next tick decides afresh
            return replace(
                state,
                replicas=decision.replicas,
                max_batch_size=decision.max_batch_size,
                max_wait_ms=decision.max_wait_ms,
            )

        in_force = in_force_config(obs, bm.spec)
        extra = {
            **observation_status(obs),
            "lastDecision": {
                "time": now_rfc3339(),
                "action": decision.action,
                "reason": decision.reason[:4096],
                "neededReplicas": decision.needed_replicas,
            },
            "loop": loop_memory_status(decision),
        }
        applied = await asyncio.to_thread(
            self.kube.apply,
            self.namespace,
            self.name,
            adjust=adjust,
            extra_status=extra,
            in_force=in_force,
        )
        if applied is None:
            return None
        self.state = replace(
            decision.next_state(before, now),
            replicas=applied.replicas,
            max_batch_size=applied.max_batch_size,
            max_wait_ms=applied.max_wait_ms,
            generation=applied.config_generation,
        )
        event = decision_event(before, decision)
        if event is not None:
            result.events.append(event)
            self.logger.info(f"{self.namespace}/{self.name}: {event.reason}: {event.message}")

        live = live_pod_names(pods)
        if applied.config_generation > before.generation and live:
            written = self.clock()
            await asyncio.to_thread(
                self.kube.touch_pods, self.namespace, live, applied.config_generation
            )
            if targets:
                self.pending = (applied.config_generation, written)
                await self._watch_propagation(targets, result)
        elif self.pending is not None:
            self._check_propagation(obs, len(targets), result)
        return result

    async def _watch_propagation(self, targets: Mapping[str, str], result: TickResult) -> None:
        """Read the pods' metrics until every one reports the pending generation (bounded)."""
        assert self.pending is not None
        deadline = self.clock() + self.propagation_timeout_s
        while targets and self.clock() < deadline:
            await asyncio.sleep(PROPAGATION_POLL_S)
            scrape = await self.scrape(targets)
            gens = [s.config.generation or 0 for s in scrape.samples.values()]
            if len(gens) == len(targets) and min(gens) >= self.pending[0]:
                self._propagated(len(targets), result)
                return

    def _check_propagation(self, obs: Observation, pods: int, result: TickResult) -> None:
        assert self.pending is not None
        gen = obs.min_config_generation
        if pods and obs.pods_scraped == pods and gen is not None and gen >= self.pending[0]:
            self._propagated(pods, result)

    def _propagated(self, pods: int, result: TickResult) -> None:
        assert self.pending is not None
        generation, written = self.pending
        self.pending = None
        result.propagation_s = self.clock() - written
        result.events.append(
            LoopEvent(
                "Normal",
                "ConfigInForce",
                f"batching config generation {generation} in force on {pods} pod(s), "
                f"{result.propagation_s:.2f} s after it was written",
            )
        )
