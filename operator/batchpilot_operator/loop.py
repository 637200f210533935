"""Actuation: the tuning loop of one BatchedModel, one tick at a time.

Each tick (every ``spec.autoscaling.intervalSeconds``; a kopf daemon in
:mod:`batchpilot_operator.handlers` drives it):

1. read the BatchedModel, list its runtime pods, scrape the ready ones' ``/metrics``;
2. compare with the previous scrape into an :class:`~batchpilot_operator.metrics.Observation`;
3. :func:`~batchpilot_operator.policy.decide` the next replicas, batch size and wait, from
   the knobs now rendered (:func:`~batchpilot_operator.ownership.state_to_render`) and the
   loop's memory (:class:`~batchpilot_operator.loopstate.LoopState`);
4. write the loop's status fields in one patch conditional on the ``resourceVersion`` read in
   step 1: its state in ``status.loop`` (the knobs it set and its memory), the observation,
   the config the pods report in force and the decision. If the object changed meanwhile,
   the write is retried only when the change cannot touch the decision (no spec edit, the
   same state rendered); otherwise the tick is dropped and the spec edit wins;
5. reconcile: the reconciler renders replicas and config from spec and status;
6. after a config change, touch an annotation on every pod, starting ones too: the kubelet
   refreshes a mounted ConfigMap only on its next sync of the pod, and a pod update starts
   one at once. The loop then watches the pods' metrics until they all report the new
   generation, and records how long that took (an Event, and :attr:`TickResult.propagation_s`).
   The pods are touched too when they report a generation older than the one rendered that
   this loop has not touched them for: one rendered by an operator process killed before
   its touch, or by the reconcile of a spec edit.

The loop's state is one object kept in memory and in ``status.loop``, from which a new
operator process resumes; only the previous scrape and the service-time points are lost on a
restart, so the first tick after one takes a baseline and holds.

Kubernetes access goes through the small :class:`Kube` port (synchronous, run in a thread),
so the loop is tested with fakes and runs against the real API server in the operator
(:class:`batchpilot_operator.loopkube.KubeForLoop`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchpilot_contract import pod as contract_pod
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.loopstate import Clocks, LoopState
from batchpilot_operator.loopstatus import (
    decision_stands,
    decision_status,
    in_force_status,
    observation_status,
)
from batchpilot_operator.metrics import (
    Observation,
    Scrape,
    ServiceHistory,
    observe,
    scrape_pods,
)
from batchpilot_operator.ownership import loop_fields, state_to_render
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
WRITE_ATTEMPTS = 3
"""Status writes tried per tick when the object changed in ways that leave the decision
standing (a status write of the reconciler's, kopf's annotations)."""

Scraper = Callable[[Mapping[str, str]], Awaitable[Scrape]]
Policy = Callable[[Observation, CurrentState, TuningSpec, float], Decision]


class Kube(Protocol):
    """What the loop needs from the cluster. Synchronous: the loop runs it in a thread."""

    def read(self, namespace: str, name: str) -> BatchedModel | None:
        """The BatchedModel, or None once it is gone."""
        ...

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The BatchedModel's runtime pods, as the API returns them."""
        ...

    def patch_status(
        self, namespace: str, name: str, fields: Mapping[str, Any], resource_version: str | None
    ) -> bool:
        """Merge ``fields`` into status if the object is still at ``resource_version``;
        False if it changed (409 Conflict) or is gone."""
        ...

    def reconcile(self, namespace: str, name: str) -> TunedState | None:
        """Converge the children and status; the state rendered (None: gone)."""
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
    conflict: bool = False
    """The object changed between the read and the write in a way that may touch the
    decision (a spec edit): nothing was written, and the next tick decides afresh."""


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
        wall_clock: Callable[[], float] = time.time,
        propagation_timeout_s: float = PROPAGATION_TIMEOUT_S,
        logger: logging.Logger | logging.LoggerAdapter[Any] = LOGGER,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.kube = kube
        self.scrape: Scraper = scrape or (lambda targets: scrape_pods(targets, clock=clock))
        self.policy = policy
        self.clock = clock
        self.wall_clock = wall_clock
        self.propagation_timeout_s = propagation_timeout_s
        self.logger = logger
        self.previous: Scrape | None = None
        self.history = ServiceHistory(per_band=HISTORY_PER_BAND)
        self.history_template: str | None = None
        """The pod template the service-time history was measured on."""
        self.state: LoopState | None = None
        """The state of the last tick whose status write succeeded (as in ``status.loop``)."""
        self.pending: tuple[int, float] | None = None
        """(generation, time written) of a config not yet reported by every pod."""
        self.announced = 0
        """The newest config generation this loop touched the pods for."""

    def clocks(self) -> Clocks:
        """The loop's clock and the wall clock, now."""
        return Clocks(self.clock(), self.wall_clock())

    def resume(self, bm: BatchedModel, running: TunedState) -> LoopState:
        """The loop's state for this tick: the one in memory or, in a new operator process,
        the one in ``status.loop``; fresh when the knobs now rendered are not the ones it set
        (a spec edit, ``kubectl scale``, new bounds): the tuning restarts from them, and the
        scale-down delay counts from now, not from old history."""
        state = self.state
        if state is None and bm.status.loop is not None:
            state = LoopState.from_status(bm.status.loop, running, self.clocks())
        if state is not None and not state.set_here(running):
            knobs = (running.replicas, running.max_batch_size, running.max_wait_ms)
            self.logger.info(
                f"{self.namespace}/{self.name}: knobs set to {knobs} outside the loop; "
                "tuning restarts from them"
            )
            state = None
        return state or LoopState.fresh(running)

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
        """Observe, decide, write and reconcile once. None when the BatchedModel is gone."""
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

        running = state_to_render(bm)
        state = self.resume(bm, running)
        before = state.current(running)
        now = self.clock()
        decision = self.policy(obs, before, spec, now)
        result.decision = decision
        after = state.after(decision, before, running, now)
        fields = {
            **observation_status(obs),
            **in_force_status(obs, bm),
            "lastDecision": decision_status(decision),
            "loop": after.to_status(self.clocks()),
        }
        written = await self._write(bm, running, loop_fields(fields))
        if written is None:
            return None
        if not written:
            self.logger.info(
                f"{self.namespace}/{self.name}: the object changed during the tick (a spec "
                f"edit); decision {decision.action} dropped, the next tick decides afresh"
            )
            result.conflict = True
            return result
        self.state = after
        applied = await asyncio.to_thread(self.kube.reconcile, self.namespace, self.name)
        if applied is None:
            return None
        event = decision_event(before, decision)
        if event is not None:
            result.events.append(event)
            self.logger.info(f"{self.namespace}/{self.name}: {event.reason}: {event.message}")

        live = live_pod_names(pods)
        generation = applied.config_generation
        if generation > before.generation and live:
            await self._announce(live, targets, generation, result)
        elif self.pending is not None:
            self._check_propagation(obs, len(targets), result)
        elif live and self._unannounced(obs, generation):
            # Rendered without a touch from this process: by an operator killed between its
            # write and its touch, or by a reconcile of a spec edit. The pods still report
            # an older generation and would read the new one only at the kubelet's next sync.
            self.logger.info(
                f"{self.namespace}/{self.name}: pods report generation "
                f"{obs.min_config_generation}, {generation} is rendered: touching them"
            )
            await self._announce(live, targets, generation, result)
        return result

    def _unannounced(self, obs: Observation, generation: int) -> bool:
        """Whether the pods report a generation older than ``generation``, rendered, that
        this loop has not touched them for."""
        reported = obs.min_config_generation
        return self.announced < generation and reported is not None and reported < generation

    async def _announce(
        self, live: list[str], targets: Mapping[str, str], generation: int, result: TickResult
    ) -> None:
        """Touch the ``live`` pods for ``generation`` and watch it propagate (bounded)."""
        written_at = self.clock()
        await asyncio.to_thread(self.kube.touch_pods, self.namespace, live, generation)
        self.announced = generation
        if targets:
            self.pending = (generation, written_at)
            await self._watch_propagation(targets, result)

    async def _write(
        self, bm: BatchedModel, running: TunedState, fields: Mapping[str, Any]
    ) -> bool | None:
        """Write ``fields`` conditionally on ``bm``'s version. On a conflict, read again and
        retry only if the decision still stands: the same spec generation, the same state
        rendered, the same loop state. True: written; False: dropped; None: gone."""
        for _ in range(WRITE_ATTEMPTS):
            rv = bm.metadata.resource_version
            ok = await asyncio.to_thread(
                self.kube.patch_status, self.namespace, self.name, fields, rv
            )
            if ok:
                return True
            fresh = await asyncio.to_thread(self.kube.read, self.namespace, self.name)
            if fresh is None:
                return None
            if not decision_stands(bm, fresh, running):
                return False
            bm = fresh
        return False

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
